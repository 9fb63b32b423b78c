"""resnest_fast.load_checkpoint: the formats it reads, and what a wrong file gets (a clear CheckpointError, the model
untouched, nothing written, no code from the file run)."""
import hashlib
import os
import pickle

import pytest
import torch

from resnest_fast import CheckpointError, load_checkpoint
from resnest_fast.checkpoint import read_state_dict
from resnest_fast.models import ResNeSt
from resnest_fast.segmentation import build_segmentor
from tests.parity import randomize_model
from resnest_fast.testing.small_models import small_model_cfg


def small(head="fcn", num_classes=19):
    return randomize_model(build_segmentor(small_model_cfg(head, num_classes)))


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} was modified"


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize("layout", ["mmseg", "bare", "ddp", "ours"])
def test_reads_the_usual_layouts(layout, tmp_path):
    src = small()
    sd = src.state_dict()
    obj = {
        "mmseg": {"meta": {"iter": 80000, "CLASSES": ("road",), "PALETTE": [[128, 64, 128]]}, "state_dict": sd,
                  "optimizer": {"state": {}, "param_groups": [{"lr": 0.01}]}},
        "bare": sd,
        "ddp": {"state_dict": {"module." + k: v for k, v in sd.items()}},
        "ours": {"model": sd, "iteration": 3},
    }[layout]
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    before = digest(path)
    dst = build_segmentor(small_model_cfg())
    report = load_checkpoint(dst, path)
    assert report.ok and str(report) == "all keys matched"
    for k, v in dst.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert digest(path) == before
    if layout == "mmseg":
        assert report.meta["iter"] == 80000


def test_mmengine_training_state_is_read_without_running_its_classes(tmp_path):
    history_buffer = pytest.importorskip("mmengine.logging.history_buffer")
    np = pytest.importorskip("numpy")
    buf = history_buffer.HistoryBuffer()
    buf.update(1.5)
    sd = small().state_dict()
    torch.save({"meta": {"iter": 10}, "state_dict": sd,
                "message_hub": {"log_scalars": {"loss": buf}, "runtime_info": {"arr": np.arange(3)}}},
               tmp_path / "mmengine.pth")
    got, meta = read_state_dict(tmp_path / "mmengine.pth")
    assert meta == {"iter": 10} and all(torch.equal(got[k], v) for k, v in sd.items())


def test_other_architecture_names_the_differences_and_loads_nothing(tmp_path):
    torch.save({"state_dict": small("fcn").state_dict()}, tmp_path / "fcn.pth")
    psp = small("pspnet")
    before = snapshot(psp)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(psp, tmp_path / "fcn.pth")
    text = str(info.value)
    assert "nothing was loaded" in text
    assert "decode_head.psp_modules" in text and "decode_head.conv_cat" in text
    assert_unchanged(psp, before)


def test_shape_mismatch_is_reported_and_strict_false_loads_the_rest(tmp_path):
    torch.save(small("fcn", 19).state_dict(), tmp_path / "c19.pth")
    ade = small("fcn", 150)
    before = snapshot(ade)
    with pytest.raises(CheckpointError, match=r"decode_head.conv_seg.weight: checkpoint \[19, 16, 1, 1\] vs model "
                                              r"\[150, 16, 1, 1\]"):
        load_checkpoint(ade, tmp_path / "c19.pth")
    assert_unchanged(ade, before)
    report = load_checkpoint(ade, tmp_path / "c19.pth", strict=False)
    assert {k for k, _, _ in report.mismatched} == {"decode_head.conv_seg.weight", "decode_head.conv_seg.bias",
                                                    "auxiliary_head.conv_seg.weight", "auxiliary_head.conv_seg.bias"}
    assert torch.equal(ade.decode_head.conv_seg.weight, before["decode_head.conv_seg.weight"])
    src = torch.load(tmp_path / "c19.pth")
    assert torch.equal(ade.backbone.stem[0].weight, src["backbone.stem.0.weight"])


def test_prefix_loads_a_segmentors_backbone_into_a_backbone(tmp_path):
    seg = small()
    torch.save({"state_dict": seg.state_dict()}, tmp_path / "seg.pth")
    cfg = dict(small_model_cfg()["backbone"])
    cfg.pop("type")
    backbone = ResNeSt(**cfg)
    load_checkpoint(backbone, tmp_path / "seg.pth", prefix="backbone")
    assert torch.equal(backbone.layer3[2].conv2.fc1.weight, seg.backbone.layer3[2].conv2.fc1.weight)
    with pytest.raises(CheckpointError, match="no entries under prefix 'neck'"):
        load_checkpoint(backbone, tmp_path / "seg.pth", prefix="neck")


def test_truncated_file(tmp_path):
    torch.save({"state_dict": small().state_dict()}, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    model = build_segmentor(small_model_cfg())
    before = snapshot(model)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(model, tmp_path / "cut.pth")
    assert_unchanged(model, before)


@pytest.mark.parametrize("obj,match", [
    ([1, 2, 3], "holds no state_dict.*list"),
    ({"epoch": 3, "note": "hello"}, r"entries \['epoch', 'note'\] are not tensors"),
    ({}, "an empty dict"),
    ({"state_dict": {"w": "not a tensor"}}, "are not tensors"),
])
def test_a_pickle_that_is_not_a_state_dict(obj, match, tmp_path):
    torch.save(obj, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(build_segmentor(small_model_cfg()), tmp_path / "x.pth")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_in_the_file_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"state_dict": {"w": torch.zeros(1)}, "payload": _Exploit(marker)}, f)
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Exploit(marker)}, tmp_path / "evil_zip.pth")
    for name in ("evil.pth", "evil_zip.pth"):
        try:
            read_state_dict(tmp_path / name)
        except CheckpointError:
            pass
        assert not marker.exists(), f"{name}: the pickle's code ran"


def test_missing_path_and_directory(tmp_path):
    model = build_segmentor(small_model_cfg())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(model, tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(model, tmp_path)


@pytest.mark.parametrize("content,match", [
    (b"101 is a number\n", (r"x\.pth' is not a PyTorch checkpoint: expected what torch\.save writes \(a zip archive "
                            r"or a pickle\), got a file starting with b'101 is a'")),
    (b"", r"x\.pth' is not a PyTorch checkpoint: .* got an empty file"),
])
def test_a_file_that_is_not_a_checkpoint_says_what_it_starts_with(content, match, tmp_path):
    """A text file used to reach the unpickler, whose error named a byte of the text (`KeyError: '101'`)."""
    (tmp_path / "x.pth").write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        read_state_dict(tmp_path / "x.pth")


@pytest.mark.parametrize("obj,match", [
    (torch.zeros(3), r"holds no state_dict: .* got a single tensor of shape \[3\]"),
    ({"meta": {}, "state_dict": "abc"}, r"holds no state_dict: .* got a str \('abc'\)"),
])
def test_what_a_checkpoint_holds_instead_of_a_state_dict_is_named(obj, match, tmp_path):
    torch.save(obj, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match=match):
        read_state_dict(tmp_path / "x.pth")


def test_a_dtype_change_other_than_float_to_float_is_refused(tmp_path):
    """int32 weights copied into float parameters are whole numbers ("all keys matched" before): refused, the model
    unchanged; strict=False skips and reports them. Half weights are a float-to-float cast: loaded, rounded as
    torch's load_state_dict (Tensor.copy_) rounds them."""
    model = small()
    sd = model.state_dict()
    floats = [k for k, v in sd.items() if v.is_floating_point()]
    torch.save({k: v.to(torch.int32) if k in floats else v for k, v in sd.items()}, tmp_path / "int32.pth")
    before = snapshot(model)
    with pytest.raises(CheckpointError, match=rf"\(nothing was loaded\):\ndtype mismatches, not a float-to-float cast "
                       rf"\({len(floats)}\): {floats[0]}: checkpoint int32 vs model float32"):
        load_checkpoint(model, tmp_path / "int32.pth")
    assert_unchanged(model, before)
    report = load_checkpoint(model, tmp_path / "int32.pth", strict=False)
    assert [k for k, _, _ in report.dtype_mismatched] == floats and not report.ok
    assert_unchanged(model, before)

    half = {k: v.half() if k in floats else v for k, v in sd.items()}
    torch.save(half, tmp_path / "half.pth")
    assert load_checkpoint(model, tmp_path / "half.pth").ok
    expected = small()
    expected.load_state_dict(half)
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected.state_dict()[k]), k


@pytest.mark.parametrize("strict", [True, False])
def test_non_finite_weights_are_refused_naming_the_file_and_the_tensors(strict, tmp_path):
    """A checkpoint of NaNs used to load and predict class 0 everywhere; one infinity in one tensor is refused too,
    the model unchanged."""
    sd = small().state_dict()
    floats = [k for k, v in sd.items() if v.is_floating_point()]
    torch.save({"state_dict": {k: torch.full_like(v, float("nan")) if k in floats else v for k, v in sd.items()}},
               tmp_path / "nan.pth")
    one = floats[len(floats) // 2]
    spoilt = dict(sd)
    spoilt[one] = sd[one].clone().view(-1).index_fill_(0, torch.tensor([0]), float("-inf")).view_as(sd[one])
    torch.save(spoilt, tmp_path / "inf.pth")
    model = small()
    before = snapshot(model)
    with pytest.raises(CheckpointError, match=(
            rf"^checkpoint '.*nan\.pth' holds NaN or infinite values in {len(floats)} of its {len(floats)} "
            rf"floating-point tensors \({floats[0]}, {floats[1]}, {floats[2]} and {len(floats) - 3} more\): "
            r"nothing was loaded")) as info:
        load_checkpoint(model, tmp_path / "nan.pth", strict=strict)
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match=rf"inf\.pth' holds NaN or infinite values in 1 of its {len(floats)} "
                                              rf"floating-point tensors \({one}\): nothing was loaded"):
        load_checkpoint(model, tmp_path / "inf.pth", strict=strict)
    assert_unchanged(model, before)


@pytest.mark.parametrize("how", ["pickle.dump", "torch.save legacy", "torch.save zip"])
def test_a_pickle_of_another_protocol_is_one_error_that_says_so_and_no_warning(how, tmp_path):
    """torch's weights-only reader warns (two lines on stderr) about any pickle protocol but 2, then fails on the
    instructions it lacks; a plain pickle also got a message about torch.save's zip format. One error, naming the
    file and the protocol, and no warning."""
    import warnings

    sd = small().state_dict()
    path = tmp_path / "plain.pkl"
    if how == "pickle.dump":
        with open(path, "wb") as f:
            pickle.dump(sd, f, protocol=4)
    else:
        torch.save(sd, path, pickle_protocol=4, _use_new_zipfile_serialization=how == "torch.save zip")
    model = small()
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CheckpointError) as refused:
            load_checkpoint(model, path)
    text = str(refused.value)
    assert text.startswith(f"{str(path)!r} could not be read as a weights-only checkpoint: "), text
    assert "pickled with protocol 4" in text and "torch.save" in text and "\n" not in text, text
    assert "Expected input to be a checkpoint returned by torch.save" not in text
    assert_unchanged(model, before)
