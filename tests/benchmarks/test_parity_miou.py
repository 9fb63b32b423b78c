"""benchmarks.parity_miou: the adapter that puts mmseg's segmentor into our training loop computes mmseg's own
loss and logits (mmseg's `loss()` on SegDataSamples, `encode_decode`, for the same weights and batch), and a
3-iteration run of the experiment at a tiny size gives loss curves of the right length, a summary, the CSV and
the PNG. With dtype float64 both models stay float64 through the training loop and evaluation (parameters, BN
statistics, mean/std, the logged loss), ours runs the fused kernels in float64 (the op probe tells them from the
pure-PyTorch fallback), and the first losses agree far below fp32 rounding. mmseg-specific parts skip with the
install command when mmseg is absent."""
import copy
import csv
import io
import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F

from benchmarks import parity_miou
from tests.benchmarks.refusals import refused
from tests.mmseg_reference import import_mmseg, mmseg_available
from tests.training.train_helpers import tiny_config

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning:mmseg.*"),
              pytest.mark.filterwarnings("ignore::UserWarning:mmcv.*"),
              pytest.mark.filterwarnings("ignore::UserWarning:mmengine.*")]

MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)  # RGB, mmseg's config values
STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)



def _mmseg_pair(tmp_path):
    structures = import_mmseg("mmseg.structures")
    pixel_data = import_mmseg("mmengine.structures").PixelData
    ref, kind, ours = parity_miou.build_models(tiny_config(tmp_path), reference="mmseg", seed=0)
    assert kind == "mmseg" and isinstance(ref, parity_miou.MMSegAdapter)
    return ref, ours, structures, pixel_data


def test_the_adapter_gives_mmsegs_own_loss_for_a_padded_batch(tmp_path, one_thread):
    adapter, _, structures, pixel_data = _mmseg_pair(tmp_path)
    mm = adapter.mmseg.train()
    g = torch.Generator().manual_seed(1)
    # a batch as our collate makes it: 32x32 crops, the second image 28x24 padded with 0, its labels with 255
    img = torch.randint(0, 256, (2, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, adapter.num_classes, (2, 32, 32), generator=g)
    labels[0, :3] = 255
    img[1, :, 28:], img[1, :, :, 24:], labels[1, 28:], labels[1, :, 24:] = 0, 0, 255, 255
    img_shape = [(32, 32), (28, 24)]
    # mmseg's own way: RGB normalised, then padded with 0 (mmseg's pad_val), samples carrying the labels
    x = torch.stack([F.pad((im[:, :h, :w].float() - MEAN) / STD, (0, 32 - w, 0, 32 - h))
                     for im, (h, w) in zip(img, img_shape)])
    samples = []
    for lab in labels:
        sample = structures.SegDataSample(metainfo=dict(img_shape=(32, 32)))
        sample.gt_sem_seg = pixel_data(data=lab[None])
        samples.append(sample)
    torch.manual_seed(7)  # the heads' Dropout2d: the same masks for both calls
    want = mm.loss(x, samples)
    torch.manual_seed(7)
    got = adapter.loss(img, labels, img_shape)
    assert sorted(got) == sorted(want) == ["aux.acc_seg", "aux.loss_ce", "decode.acc_seg", "decode.loss_ce"]
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)
    total = want["decode.loss_ce"] + want["aux.loss_ce"]
    torch.testing.assert_close(adapter.sum_losses(got), total, rtol=1e-5, atol=1e-6)


def test_the_adapter_infers_mmsegs_logits_whole_and_slide(tmp_path, one_thread):
    adapter, _, _, _ = _mmseg_pair(tmp_path)
    mm = adapter.mmseg.eval()
    img = torch.randint(0, 256, (1, 3, 40, 48), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    x = ((img[0].float() - MEAN) / STD)[None]
    with torch.no_grad():
        want = mm.encode_decode(x, [dict(img_shape=(40, 48))])
        got = adapter.inference(img)
        assert got.shape == (1, adapter.num_classes, 40, 48)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # slide: 32x32 windows, stride 16 -> 2x2 windows, logits averaged where they overlap
        total = torch.zeros_like(want)
        count = torch.zeros(1, 1, 40, 48)
        for y1, x1 in ((0, 0), (0, 16), (8, 0), (8, 16)):
            total[:, :, y1:y1 + 32, x1:x1 + 32] += mm.encode_decode(x[:, :, y1:y1 + 32, x1:x1 + 32],
                                                                    [dict(img_shape=(32, 32))])
            count[:, :, y1:y1 + 32, x1:x1 + 32] += 1
        slide = adapter.inference(img, mode="slide", crop_size=(32, 32), stride=(16, 16))
        torch.testing.assert_close(slide, total / count, rtol=1e-5, atol=1e-5)
    assert mm.test_cfg["mode"] == "whole"  # the override lasts one call


@pytest.mark.parametrize("reference, control", [("auto", False), ("reference-backend", True)])
def test_a_tiny_run_gives_both_curves_a_summary_a_csv_and_a_png(tmp_path, reference, control):
    summary = parity_miou.run_experiment(tiny_config(tmp_path), max_iters=3, seed=0, reference=reference,
                                         control=control, out_dir=str(tmp_path / "out"), progress=False,
                                         log=io.StringIO())
    kind = "mmseg" if reference == "auto" and mmseg_available() else "reference-backend"
    assert summary["reference"] == kind
    labels = ("reference", "ours", "control") if control else ("reference", "ours")
    assert tuple(summary["losses"]) == tuple(summary["metrics"]) == labels
    for label in labels:
        assert len(summary["losses"][label]) == 3
        assert all(0 < v < 10 for v in summary["losses"][label])  # 7 classes: ln 7 ~ 1.9 per head at the start
        assert {"aAcc", "mIoU", "mAcc"} <= set(summary["metrics"][label])
        assert 0 <= summary["metrics"][label]["mIoU"] <= 1
    # the same weights, batch and dropout masks: the first losses agree to fp32 rounding (mmseg's or the
    # reference backend's ops against the fused ones); a different batch or init would differ by ~0.1
    assert summary["loss_first_abs_diff"] < 1e-4
    diff = 100 * (summary["metrics"]["ours"]["mIoU"] - summary["metrics"]["reference"]["mIoU"])
    assert summary["mIoU_diff_points"] == pytest.approx(diff)
    # the same weights, batches and dropout masks for 3 iterations: the verdict is "within", the CSV says so
    assert summary["tolerance_points"] == parity_miou.TOLERANCE and abs(diff) <= summary["tolerance_points"]
    assert summary["within_tolerance"] is True
    assert summary["loss_max_abs_diff"] == pytest.approx(
        max(abs(a - b) for a, b in zip(summary["losses"]["reference"], summary["losses"]["ours"])))
    with open(summary["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["row"] for r in rows] == ["iteration"] * 3 + ["summary"]
    assert [int(r["iter"]) for r in rows[:3]] == [1, 2, 3]
    assert int(rows[-1]["threads"]) == summary["threads"] == 1  # the synthetic config trains on one thread
    assert {"machine", "git", "torch"} <= set(rows[0]) and rows[0]["machine"]
    assert float(rows[1]["loss_ours"]) == pytest.approx(summary["losses"]["ours"][1])
    assert rows[-1]["reference"] == kind and float(rows[-1]["mIoU_ours"]) == summary["metrics"]["ours"]["mIoU"]
    assert rows[-1]["within_tolerance"] == "True" and float(rows[-1]["tolerance_points"]) == 0.5
    with open(summary["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    if control:  # the reference again with 2 threads instead of the config's 1: fp32 rounding apart, no more
        assert summary["control_threads"] == 2 and int(rows[-1]["control_threads"]) == 2
        assert summary["losses"]["control"][0] == pytest.approx(summary["losses"]["reference"][0], abs=1e-4)
        assert float(rows[2]["loss_control"]) == pytest.approx(summary["losses"]["control"][2])
        assert float(rows[-1]["mIoU_control"]) == summary["metrics"]["control"]["mIoU"]
    else:
        assert rows[0]["loss_control"] == rows[-1]["mIoU_control"] == ""
    text = "\n".join(parity_miou.summary_lines(summary))
    assert kind in text and "mIoU difference" in text and ("control" in text) == control


def test_bad_arguments_are_named(capsys):
    for argv, name in ((["--max-iters", "0"], "--max-iters"), (["--config", "no-such-config"], "--config"),
                       (["--tolerance", "-1"], "--tolerance")):
        with pytest.raises(SystemExit) as exc:
            parity_miou.main(argv)
        assert exc.value.code == 2
        assert name in capsys.readouterr().err
    with pytest.raises(ValueError, match="reference must be one of"):
        parity_miou.build_models(parity_miou.DEFAULT_CONFIG, reference="mmseg2")


def test_float64_models_stay_float64_through_training_and_evaluation(tmp_path, one_thread):
    from resnest_fast.segmentation import load_config

    config = tiny_config(tmp_path)
    ref, _, ours = parity_miou.build_models(config, reference="auto", seed=0, dtype="float64")
    for model in (ref, ours):
        result = parity_miou.train_and_evaluate(load_config(config), model, max_iters=1, seed=0, progress=False,
                                                log=io.StringIO())
        floats = [t for t in itertools.chain(model.parameters(), model.buffers()) if t.is_floating_point()]
        assert floats and {t.dtype for t in floats} == {torch.float64}  # BN statistics and mean/std included
        # the logged loss kept float64 precision (a float32 loss, or a float32 log, rounds to 24 bits)
        assert float(torch.tensor(result["losses"][0], dtype=torch.float32)) != result["losses"][0]
        assert 0 <= result["metrics"]["mIoU"] <= 1


@pytest.mark.parametrize("backend, dtype", [("reference", torch.float64), ("cpu", torch.float64),
                                            ("cpu", torch.float32)])
def test_fused_ops_used_tells_the_kernels_from_the_fallback(tmp_path, one_thread, backend, dtype):
    from resnest_fast import _extension as ext
    from resnest_fast.segmentation import build_segmentor, load_config

    if backend == "cpu" and not ext.HAS_CPU_KERNELS:
        pytest.skip("resnest_fast._C was not built with CPU kernels")
    model = build_segmentor(load_config(tiny_config(tmp_path))["model"], backend=backend).to(dtype)
    before = copy.deepcopy(model.state_dict())
    ops = parity_miou.fused_ops_used(model, (32, 32))
    if backend == "reference":
        assert ops == {}  # the pure-PyTorch path calls no custom op
    else:  # forward (pool, combine, BN statistics) and the two-pass backward, all in the model's dtype
        assert {"splat_pool", "splat_combine", "splat_bn_stats", "splat_backward_input"} <= set(ops)
        assert all(v == [str(dtype).replace("torch.", "")] for v in ops.values()), ops
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # probed on a copy: BN statistics untouched


def test_a_tiny_float64_run_agrees_far_below_fp32_rounding(tmp_path):
    summary = parity_miou.run_experiment(tiny_config(tmp_path), max_iters=2, seed=0, dtype="float64",
                                         out_dir=str(tmp_path / "out"), plot=False, progress=False,
                                         log=io.StringIO())
    assert summary["dtype"] == "float64"
    # fp32 gives ~2e-7 here (one ulp of a loss of 2.5); float64 runs of the same function agree to ~1e-15
    assert summary["loss_first_abs_diff"] < 1e-12
    assert summary["loss_coincide_iters"] == 2
    assert summary["csv"].endswith("parity-miou-float64.csv")
    with open(summary["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert {r["dtype"] for r in rows} == {"float64"}
    assert rows[-1]["ours_fused_ops"] and "float32" not in rows[-1]["ours_fused_ops"]
    assert "float64" in "\n".join(parity_miou.summary_lines(summary))


def test_a_bad_dtype_is_rejected_by_name(capsys):
    with pytest.raises(SystemExit) as exc:
        parity_miou.main(["--dtype", "float16"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--dtype" in err and "float16" in err and "float64" in err
    with pytest.raises(ValueError, match="dtype must be one of"):
        parity_miou.build_models(parity_miou.DEFAULT_CONFIG, dtype="half")


def test_pretraining_gives_both_runs_the_references_trained_weights(tmp_path, one_thread, monkeypatch):
    """--pretrain-iters: the reference trains alone first and ours starts from exactly the weights it reached
    (checked on the state handed to the compared runs, against a reference trained the same way by hand); --lr
    reaches the compared runs' optimizer."""
    from resnest_fast.segmentation import load_config

    config = tiny_config(tmp_path)
    seen = []
    real = parity_miou.train_and_evaluate

    def spy(cfg, model, **kw):
        seen.append((cfg["schedule"]["optimizer"]["lr"], copy.deepcopy(model.state_dict())))
        return real(cfg, model, **kw)

    monkeypatch.setattr(parity_miou, "train_and_evaluate", spy)
    summary = parity_miou.run_experiment(config, max_iters=1, seed=0, pretrain_iters=2, lr=0.003,
                                         out_dir=str(tmp_path / "out"), plot=False, progress=False, log=io.StringIO())
    pre_lr, init = seen[0]
    (ref_lr, ref_start), (ours_lr, ours_start) = seen[1], seen[2]
    assert pre_lr == load_config(config)["schedule"]["optimizer"]["lr"] and ref_lr == ours_lr == 0.003
    # the same model trained by hand from the same init for 2 iterations gives the compared runs' start
    by_hand, _, _ = parity_miou.build_models(config, reference="auto", seed=0)
    by_hand.load_state_dict(init)
    real(load_config(config), by_hand, max_iters=2, seed=0, progress=False, log=io.StringIO())
    want = {k.removeprefix("mmseg."): v for k, v in by_hand.state_dict().items()}
    moved = [k for k, v in init.items() if v.is_floating_point() and not torch.equal(v, ref_start[k])]
    assert moved, "pretraining changed no weight"
    for k, v in ours_start.items():
        assert torch.equal(v, want[k]), k
    assert summary["pretrain_iters"] == 2 and summary["lr"] == 0.003 and 0 <= summary["pretrained"]["metrics"]["mIoU"] <= 1
    with open(summary["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert rows[-1]["pretrain_iters"] == "2" and rows[-1]["lr"] == "0.003" and rows[-1]["mIoU_pretrained"]
    assert "after 2 iterations of training alone" in "\n".join(parity_miou.summary_lines(summary))
    with pytest.raises(ValueError, match="pretrain_iters must be >= 0"):
        parity_miou.run_experiment(config, max_iters=1, pretrain_iters=-1)
    with pytest.raises(ValueError, match="lr must be > 0"):
        parity_miou.run_experiment(config, max_iters=1, lr=0.0)


def test_a_table_config_runs_from_the_shared_random_weights_not_imagenet_ones():
    """The table configs name ImageNet weights (model.pretrained), which the training loop would load into ours
    (and fetch): the compared runs must start from the same random weights, so neither model carries it. Built on
    the meta device: only the attribute matters."""
    with torch.device("meta"):
        ref, _, ours = parity_miou.build_models("resnest_s101-d8_fcn_4xb2-80k_cityscapes-512x1024",
                                                reference="reference-backend", seed=0)
    assert ours.pretrained is None and ref.pretrained is None


@pytest.mark.parametrize("flag, value", [("--tolerance", "nan"), ("--lr", "inf"), ("--max-iters", "0"),
                                         ("--pretrain-iters", "-1")])
def test_a_number_out_of_range_is_refused_before_training(flag, value, capsys, monkeypatch):
    monkeypatch.setattr(parity_miou, "build_models", lambda *a, **k: pytest.fail("the experiment started"))
    refused(capsys, parity_miou.main, [flag, value], f"argument {flag}:", repr(value))


def test_ctrl_c_is_one_line_and_exit_130_with_nothing_written(tmp_path, monkeypatch, capsys):
    """The rows compare two finished runs: Ctrl-C during training writes nothing and says so in one line."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(parity_miou, "run_experiment", interrupted)
    assert parity_miou.main(["--out-dir", str(tmp_path / "out"), "--no-progress"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted (Ctrl-C)" in err[0] and "nothing written" in err[0], err
    assert not (tmp_path / "out").exists()
