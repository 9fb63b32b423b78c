"""The eight models of mmseg's ResNeSt table, built by mmseg 1.2.2 and by this project from the same (random)
weights: the configs resolve to mmseg's model configs, an mmseg-format checkpoint loads with strict=True through
resnest_fast.load_checkpoint, and the models agree on logits (eval, fp32, max abs diff <= 1e-4 on 1x3x128x256)
and on losses and every gradient (train mode, in float64 where the maths must agree to rounding: see
tests/models/test_resnest.py for why fp32 gradients of a deep network are not comparable element by element)."""
import copy
import json
import pathlib

import pytest
import torch

from resnest_fast.segmentation import build_model, build_segmentor, list_configs, load_config, slide_defaults
from resnest_fast.testing.small_models import small_model_cfg
from tests.mmseg_reference import import_mmseg
from tests.parity import randomize_model
from resnest_fast.testing.tolerances import assert_max_abs

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning:mmseg.*"),
              pytest.mark.filterwarnings("ignore::UserWarning:mmcv.*")]

REFERENCE_DIR = pathlib.Path(__file__).resolve().parents[1] / "data" / "mmseg_reference"
NAMES = sorted(p.stem for p in REFERENCE_DIR.glob("resnest_*.json"))
MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


def reference_cfg(name):
    return json.loads((REFERENCE_DIR / f"{name}.json").read_text())["model_cfg"]


def as_reference(cfg):
    """Our config in the reference's terms: the reference facts were recorded with SyncBN replaced by BN, with
    mmseg's BGR input convention and with pretrained=None (tests/models/test_pretrained.py compares `pretrained`
    with mmseg's own config files); JSON has lists where Python configs have tuples."""
    text = json.dumps(dict(cfg, pretrained=None)).replace('"SyncBN"', '"BN"')
    text = text.replace('"bgr_to_rgb": false', '"bgr_to_rgb": true')
    return json.loads(text)


def test_the_shipped_configs_are_the_eight_of_the_table():
    # plus the synthetic config of the README's first command (resnest_fast/segmentation/configs/synthetic/)
    assert [n for n in list_configs() if "_synthetic-" not in n] == NAMES
    assert [n for n in list_configs() if "_synthetic-" in n] == ["resnest_s50-d8-w16_fcn_1xb8-400_synthetic-64x64"]


@pytest.mark.parametrize("name", NAMES)
def test_config_resolves_to_mmsegs_model(name):
    assert as_reference(load_config(name)["model"]) == reference_cfg(name)


def mmseg_model(name):
    registry = import_mmseg("mmseg.registry")
    import_mmseg("mmseg.utils").register_all_modules()  # default scope 'mmseg', for the data preprocessor
    model = registry.MODELS.build(copy.deepcopy(reference_cfg(name)))
    randomize_model(model)
    return model


def save_like_mmseg(model, path):
    torch.save({"meta": {"mmseg_version": "1.2.2", "iter": 80000}, "state_dict": model.state_dict()}, path)


@pytest.mark.parametrize("name", NAMES)
def test_eval_logits_match_mmseg(name, tmp_path):
    ref = mmseg_model(name).eval()
    save_like_mmseg(ref, tmp_path / "ref.pth")
    ours = build_model(name, checkpoint=tmp_path / "ref.pth").eval()
    img = torch.rand(1, 3, 128, 256) * 255
    x = (img - MEAN) / STD
    with torch.no_grad():
        want = ref(x, mode="tensor")
        got = ours.decode(x)
        assert got.shape == want.shape
        assert (got - want).abs().max().item() <= 1e-4, (got - want).abs().max().item()
        full = ours(img)  # RGB 0-255 in, logits at the input's size out
        want_full = ref.encode_decode(x, [dict(img_shape=(128, 256))])
    assert full.shape == (1, ours.num_classes, 128, 256)
    assert (full - want_full).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_train_losses_and_gradients_match_mmseg(name):
    structures = import_mmseg("mmseg.structures")
    pixel_data = import_mmseg("mmengine.structures").PixelData
    ref = mmseg_model(name).double().train()
    ours = build_segmentor(load_config(name)["model"])
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.double().train()
    img = torch.rand(2, 3, 64, 96, dtype=torch.float64) * 255
    labels = torch.randint(0, ours.num_classes, (2, 64, 96))
    labels[:, :5] = 255
    samples = []
    for lab in labels:
        sample = structures.SegDataSample(metainfo=dict(img_shape=(64, 96)))
        sample.gt_sem_seg = pixel_data(data=lab[None])
        samples.append(sample)
    # Dropout2d in both heads: the same seed gives the same masks when they are drawn in mmseg's order.
    torch.manual_seed(5)
    want = ref.loss((img - MEAN.double()) / STD.double(), samples)
    torch.manual_seed(5)
    got = ours.loss(img, labels)
    assert sorted(got) == sorted(want)
    for key in want:
        assert_max_abs(key, got[key].reshape(-1), want[key].reshape(-1), tol=1e-10)
    ours.sum_losses(got).backward()
    sum(v for k, v in want.items() if "loss" in k).backward()
    grads = {n: p.grad for n, p in ref.named_parameters()}
    scale = max(g.abs().max().item() for g in grads.values() if g is not None)
    for n, p in ours.named_parameters():
        assert (p.grad is None) == (grads[n] is None), n
        if p.grad is not None:
            assert_max_abs(f"grad {n}", p.grad, grads[n], tol=1e-9 * max(scale, 1.0))
    # Running statistics: with 2 samples, the attention BN of each of the 33 blocks amplifies float64 rounding
    # (~1e-14 after the stem, ~5e-8 after layer4 for mmseg against itself in another summation order).
    for (n, b_ref), (_, b) in zip(ref.state_dict().items(), ours.state_dict().items()):
        assert_max_abs(n, b.double(), b_ref.double(), tol=1e-6)


def test_padded_batch_is_normalised_then_zero_padded_as_mmseg():
    """collate pads uint8 images with 0; mmseg normalises first and pads afterwards with 0. With img_shape the
    segmentor zeroes the padding after normalising, so the model sees mmseg's input (and the loss is mmseg's)."""
    from torch.nn import functional as F

    from resnest_fast.training.data import collate
    from resnest_fast.testing.small_models import small_model_cfg

    g = torch.Generator().manual_seed(0)
    items = [
        {"img": torch.randint(0, 256, (3, 20, 28), generator=g, dtype=torch.uint8),
         "gt_semantic_seg": torch.randint(0, 5, (20, 28), generator=g)},
        {"img": torch.randint(0, 256, (3, 32, 24), generator=g, dtype=torch.uint8),
         "gt_semantic_seg": torch.randint(0, 5, (32, 24), generator=g)},
    ]
    batch = collate(items, size=(32, 32))
    cfg = small_model_cfg("fcn", num_classes=5)
    cfg["decode_head"]["dropout_ratio"] = cfg["auxiliary_head"]["dropout_ratio"] = 0
    model = build_segmentor(cfg)
    expected = torch.stack([
        F.pad((it["img"].float()[None] - MEAN) / STD, (0, 32 - it["img"].shape[2], 0, 32 - it["img"].shape[1]))[0]
        for it in items
    ])
    x = model.preprocess(batch["img"], batch["img_shape"])
    torch.testing.assert_close(x, expected)
    assert not torch.equal(model.preprocess(batch["img"]), expected)  # without img_shape the padding is -mean/std
    model.train()
    state = copy.deepcopy(model.state_dict())
    ours = model.loss(batch["img"], batch["gt_semantic_seg"], batch["img_shape"])
    model.load_state_dict(state)
    feats = model.extract_feat(expected)
    for prefix, head in (("decode", model.decode_head), ("aux", model.auxiliary_head)):
        ref = head.loss(head(feats), batch["gt_semantic_seg"])
        torch.testing.assert_close(ours[f"{prefix}.loss_ce"], ref)
    with pytest.raises(ValueError, match="img_shape has 1 entries for a batch of 2"):
        model.preprocess(batch["img"], batch["img_shape"][:1])


def test_preprocess_follows_the_model_dtype():
    """After .double(), the mean/std buffers are float64 and every image (uint8 or float32) comes out in float64,
    equal to the normalisation computed in float64 from mmseg's mean/std (a float32 image left in float32 would
    reach the float64 conv and fail)."""
    from resnest_fast.testing.small_models import small_model_cfg

    model = build_segmentor(small_model_cfg("fcn", num_classes=5)).double()
    assert model.mean.dtype == model.std.dtype == torch.float64
    img = torch.randint(0, 256, (1, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    expected = (img.double() - MEAN.double()) / STD.double()
    for given in (img, img.float()):
        x = model.preprocess(given)
        assert x.dtype == torch.float64
        torch.testing.assert_close(x, expected, rtol=0, atol=1e-12)
    with torch.no_grad():
        assert model.eval()(img.float()).dtype == torch.float64


def test_mmseg_reference_builds_configs_that_name_pretrained_weights():
    """mmseg's EncoderDecoder sets `backbone.pretrained` by attribute; our configs name the ImageNet weights, which
    building (unlike init_weights) never loads."""
    import_mmseg("mmseg")
    from resnest_fast.testing.mmseg_reference import build_mmseg_segmentor
    from resnest_fast.testing.small_models import small_model_cfg

    cfg = dict(small_model_cfg("fcn"), pretrained="open-mmlab://resnest101")
    model = build_mmseg_segmentor(cfg)
    assert type(model).__name__ == "EncoderDecoder" and model.backbone.init_cfg["type"] == "Pretrained"


def test_a_crop_size_without_a_stride_takes_two_thirds_of_it_as_the_commands_do():
    """model.inference / predict and the commands (slide_defaults) share one rule: a crop_size given without a stride
    gets int(2/3) of it; test_cfg's stride only goes with test_cfg's own window. The model took test_cfg's (24, 24)
    for any window: 'stride (24, 24) is larger than crop_size (16, 16)' about a stride never passed, and other
    windows than `infer --crop-size` for larger crops."""
    torch.manual_seed(0)
    cfg = dict(small_model_cfg(), test_cfg=dict(mode="slide", crop_size=(24, 24), stride=(24, 24)))
    model = randomize_model(build_segmentor(cfg)).eval()
    x = torch.randint(0, 256, (1, 3, 45, 67), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    # (crop_size given, the stride it must run with): int(16 * 2 / 3) = 10, int(30 * 2 / 3) = 20, int(36 * 2 / 3) = 24
    for crop, stride in [((16, 16), (10, 10)), ((30, 30), (20, 20)), ((30, 36), (20, 24)), ((24, 24), (24, 24))]:
        explicit = model.inference(x, mode="slide", crop_size=crop, stride=stride)
        torch.testing.assert_close(model.inference(x, mode="slide", crop_size=crop), explicit, rtol=0, atol=0)
        assert torch.equal(model.predict(x, crop_size=crop), explicit.argmax(1))
        assert slide_defaults(model, {}, crop, None) == (crop, stride)
    other = model.inference(x, mode="slide", crop_size=(30, 30), stride=(24, 24))  # the stride the model used to take
    assert not torch.equal(other, model.inference(x, crop_size=(30, 30)))  # columns from 20, not 24
    # neither given: test_cfg's windows; a stride alone: test_cfg's window with it
    torch.testing.assert_close(model.inference(x), model.inference(x, crop_size=(24, 24), stride=(24, 24)),
                               rtol=0, atol=0)
    assert slide_defaults(model, {}, None, None) == ((24, 24), (24, 24))
    assert slide_defaults(model, {}, None, (12, 12)) == ((24, 24), (12, 12))
    torch.testing.assert_close(model.inference(x, stride=(12, 12)),
                               model.inference(x, crop_size=(24, 24), stride=(12, 12)), rtol=0, atol=0)
