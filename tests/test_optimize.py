"""optimize_for_inference: the optimised segmentor (BN folded, post-ops fused, weights prepacked, channels_last)
gives the original model's outputs; the original is left untouched."""
import copy

import pytest
import torch

from resnest_fast import optimize_for_inference
from resnest_fast.models import ResNeSt
from resnest_fast.optimize import FrozenBottleneck, FrozenConv2d
from resnest_fast.segmentation import build_segmentor
from tests.parity import randomize_model
from resnest_fast.testing.small_models import small_model_cfg
from resnest_fast.testing.tolerances import assert_max_abs


def small(head):
    return randomize_model(build_segmentor(small_model_cfg(head))).eval()


@pytest.mark.parametrize("head", ["fcn", "pspnet", "deeplabv3", "deeplabv3plus"])
def test_optimised_segmentor_gives_the_same_logits(head):
    model = small(head)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = optimize_for_inference(model)
    img = torch.rand(2, 3, 67, 93) * 255
    with torch.no_grad():
        want = model(img)
        got = fast(img)
    assert got.shape == want.shape
    assert_max_abs("logits", got, want, tol=1e-4)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "the original was modified"
    assert model.auxiliary_head is not None and fast.auxiliary_head is None
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.decode_head.modules())
    assert sum(isinstance(m, FrozenBottleneck) for m in fast.modules()) == 16
    if torch.backends.mkldnn.is_available():
        convs = [m for m in fast.modules() if isinstance(m, FrozenConv2d)]
        # the wide 3x3 convs run as Winograd (tests/ops/test_winograd.py), every other conv on packed weights
        packed = [m for m in convs if not m.native_depthwise and m.winograd_weight is None]
        assert packed and all(m._packed is not None for m in packed), "a conv was not prepacked"
        # DeepLabV3+'s separable ASPP: dilated depthwise convs run on ATen's NCHW kernel, unpacked
        dilated_dw = [m for m in convs if m.groups == m.in_channels > 1 and max(m.dilation) > 1]
        assert all(m.native_depthwise and m._packed is None for m in dilated_dw)
        assert bool(dilated_dw) == (head == "deeplabv3plus")


def test_backbone_alone_and_sliding_window():
    cfg = dict(small_model_cfg()["backbone"])
    cfg.pop("type")
    net = randomize_model(ResNeSt(**cfg)).eval()
    fast = optimize_for_inference(net)
    x = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        for a, b in zip(fast(x), net(x)):
            assert_max_abs("features", a, b, tol=1e-4)
    model = small("pspnet")
    fast = optimize_for_inference(model)
    img = torch.rand(1, 3, 64, 100) * 255
    got = fast.inference(img, mode="slide", crop_size=(48, 48), stride=(32, 32))
    assert_max_abs("slide", got, model.inference(img, mode="slide", crop_size=(48, 48), stride=(32, 32)), tol=1e-4)


def test_float64_runs_the_unpacked_path_exactly():
    model = small("deeplabv3").double()
    fast = optimize_for_inference(model)
    img = torch.rand(1, 3, 40, 56, dtype=torch.float64) * 255
    with torch.no_grad():
        assert_max_abs("float64 logits", fast(img), model(img), tol=1e-10)


def test_inplace_and_gradients_are_off():
    model = small("fcn")
    copy_ = copy.deepcopy(model)
    fast = optimize_for_inference(copy_, inplace=True)
    assert fast is copy_
    assert not any(p.requires_grad for p in fast.parameters())
    with pytest.raises(TypeError, match="nn.Module"):
        optimize_for_inference(None)
    assert "prepack=" in repr(fast)
