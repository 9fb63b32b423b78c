"""Winograd F(2x2, 3x3) convolution (resnest_fast.ops.winograd): the C++ kernel and the pure-PyTorch reference
against F.conv2d in float64, over dilations, groups, odd sizes, layouts, post-ops and several tile blocks; the
op's registration (opcheck, torch.compile); bad input; and optimize_for_inference with Winograd convs against
the original model."""
import math

import pytest
import torch
import torch.nn.functional as F

from resnest_fast import optimize_for_inference
from resnest_fast.ops import winograd as wg
from resnest_fast.optimize import FrozenConv2d
from resnest_fast.segmentation import build_segmentor
from tests.parity import randomize_model
from resnest_fast.testing.small_models import small_model_cfg
from resnest_fast.testing.tolerances import assert_max_abs

needs_kernels = pytest.mark.skipif(not wg.HAS_WINOGRAD_KERNELS, reason="resnest_fast._C without winograd_conv3x3")
IMPLS = ["kernel", "reference"]
# (B, C, K, H, W, dilation, groups): odd sizes, a 1x1 image, dilation larger than the image, groups 2 and 4
CASES = [
    (1, 8, 16, 7, 9, 1, 1),
    (2, 8, 8, 5, 4, 1, 2),
    (1, 12, 8, 1, 1, 1, 1),
    (2, 16, 24, 11, 6, 2, 4),
    (1, 8, 12, 9, 13, 3, 2),
    (1, 4, 4, 6, 5, 7, 1),
    (3, 6, 9, 8, 8, 2, 3),
]


def conv_inputs(b, c, k, h, w, groups, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g)
    weight = torch.randn(k, c // groups, 3, 3, generator=g) / math.sqrt(9 * c / groups)
    bias = torch.randn(k, generator=g)
    other = torch.randn(b, k, h, w, generator=g)
    return x, weight, bias, other


def conv_ref64(x, weight, bias, other, dilation, groups, relu):
    out = F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(), 1, dilation, dilation,
                   groups)
    if other is not None:
        out = out + other.double()
    return torch.relu(out) if relu else out


def run(impl, x, u, bias, other, dilation, groups, relu):
    if impl == "kernel":
        if not wg.HAS_WINOGRAD_KERNELS:
            pytest.skip("resnest_fast._C without winograd_conv3x3")
        return torch.ops.resnest_fast.winograd_conv3x3(x, u, bias, other, dilation, groups, relu)
    return wg.conv3x3_winograd_reference(x, u, bias, other, dilation, groups, relu)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}c{}k{}_{}x{}_d{}g{}".format(*c))
@pytest.mark.parametrize("post", ["none", "bias", "bias+other+relu", "relu"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_matches_float64_convolution(impl, case, post, layout):
    b, c, k, h, w, d, groups = case
    x, weight, bias, other = conv_inputs(b, c, k, h, w, groups)
    bias = bias if "bias" in post else None
    other = other if "other" in post else None
    relu = "relu" in post
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    u = wg.winograd_weight_transform(weight, groups)
    got = run(impl, x, u, bias, other, d, groups, relu)
    want = conv_ref64(x, weight, bias, other, d, groups, relu)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert got.is_contiguous(memory_format=torch.channels_last)
    # as accurate as the direct fp32 convolution, within a factor (transform coefficients are 0, +-1, +-1/2)
    direct = F.conv2d(x, weight, bias, 1, d, d, groups)
    if other is not None:
        direct = direct + other
    direct = torch.relu(direct) if relu else direct
    err = (got.double() - want).abs().max().item()
    direct_err = (direct.double() - want).abs().max().item()
    assert err <= 4 * direct_err + 1e-6, f"winograd error {err:.3g}, direct fp32 conv {direct_err:.3g}"


@needs_kernels
def test_many_tile_blocks_and_a_short_last_block():
    """9025 tiles of 8 channels: more than one block of tiles (the kernel's blocks hold 4 MB of transformed
    values, 8192 tiles at 8 channels), the last one shorter; and the same again with a dilation, whose phases cut
    across blocks."""
    for d in (1, 3):
        x, weight, bias, other = conv_inputs(1, 8, 8, 190, 190, 1, seed=d)
        u = wg.winograd_weight_transform(weight, 1)
        got = torch.ops.resnest_fast.winograd_conv3x3(x, u, bias, other, d, 1, True)
        assert_max_abs("many blocks", got.double(), conv_ref64(x, weight, bias, other, d, 1, True), tol=1e-5)


def test_float64_reference_is_exact_to_float64_rounding():
    x, weight, bias, other = conv_inputs(2, 6, 4, 9, 7, 2)
    x, weight, bias, other = x.double(), weight.double(), bias.double(), other.double()
    u = wg.winograd_weight_transform(weight, 2)
    got = wg.conv3x3_winograd(x, u, bias, other, dilation=2, groups=2, relu=True)  # float64: the reference runs
    assert got.dtype == torch.float64
    assert_max_abs("float64", got, conv_ref64(x, weight, bias, other, 2, 2, True), tol=1e-12)


def test_relu_keeps_nan_like_torch():
    x, weight, bias, _ = conv_inputs(1, 4, 4, 4, 4, 1)
    x[0, 0, 1, 1] = float("nan")
    u = wg.winograd_weight_transform(weight, 1)
    got = wg.conv3x3_winograd(x, u, bias, None, relu=True)
    want = torch.relu(F.conv2d(x, weight, bias, padding=1))
    assert torch.equal(torch.isnan(got), torch.isnan(want)) and torch.isnan(got).any()


@needs_kernels
@pytest.mark.parametrize("with_post", [False, True])
def test_opcheck(with_post):
    x, weight, bias, other = conv_inputs(2, 8, 6, 5, 7, 2)
    u = wg.winograd_weight_transform(weight, 2)
    args = (x, u, bias if with_post else None, other if with_post else None, 2, 2, with_post)
    torch.library.opcheck(torch.ops.resnest_fast.winograd_conv3x3.default, args)


@needs_kernels
def test_compiles_fullgraph():
    x, weight, bias, other = conv_inputs(1, 8, 8, 6, 10, 1)
    u = wg.winograd_weight_transform(weight, 1)

    def fn(x, other):
        return wg.conv3x3_winograd(x, u, bias, other, dilation=1, groups=1, relu=True) * 2

    torch._dynamo.reset()
    got = torch.compile(fn, fullgraph=True)(x, other)
    assert_max_abs("compiled", got.double(), 2 * conv_ref64(x, weight, bias, other, 1, 1, True), tol=1e-5)


def test_bad_input_names_the_argument():
    x, weight, bias, other = conv_inputs(1, 8, 8, 5, 5, 2)
    u = wg.winograd_weight_transform(weight, 2)
    with pytest.raises(ValueError, match="u must be winograd_weight_transform"):
        wg.conv3x3_winograd(x, u, groups=1)
    with pytest.raises(ValueError, match="x must be 4-D"):
        wg.conv3x3_winograd(x[0], u, groups=2)
    with pytest.raises(ValueError, match="dilation must be >= 1"):
        wg.conv3x3_winograd(x, u, groups=2, dilation=0)
    with pytest.raises(ValueError, match=r"weight must be \(K, C/groups, 3, 3\)"):
        wg.winograd_weight_transform(weight[..., :2], 2)
    with pytest.raises(ValueError, match="groups"):
        wg.winograd_weight_transform(weight, 3)
    if wg.HAS_WINOGRAD_KERNELS:
        op = torch.ops.resnest_fast.winograd_conv3x3
        with pytest.raises(RuntimeError, match="bias must be a float32 tensor of shape"):
            op(x, u, bias[:3], None, 1, 2, False)
        with pytest.raises(RuntimeError, match="other must be a float32 tensor of shape"):
            op(x, u, None, other[:, :, :4], 1, 2, False)
        with pytest.raises(RuntimeError, match="x must be float32"):
            op(x.double(), u, None, None, 1, 2, False)


def test_worthwhile_rule():
    assert wg.winograd_worthwhile(128, 32, 64, 2)  # stage 3 split-attention conv at 256x512
    assert wg.winograd_worthwhile(2560, 32, 64, 1)  # the ASPP bottleneck
    assert not wg.winograd_worthwhile(2048, 32, 64, 12)  # ASPP branch: phases padded to 48x72, 1.7x the area
    assert not wg.winograd_worthwhile(wg.WINOGRAD_MIN_CHANNELS - 1, 64, 64, 1)
    assert wg.winograd_tiles(33, 65, 1) == (17, 33) and wg.winograd_tiles(32, 64, 12) == (2, 3)


@pytest.mark.parametrize("head", ["deeplabv3", "pspnet"])
def test_optimized_segmentor_with_winograd_convs(head, monkeypatch):
    """Every 3x3 stride-1 conv of a small segmentor through Winograd (the channel threshold lowered to 1; the small
    model's convs are narrow): the logits stay within fp32 tolerance of the original model, and winograd=False
    keeps them all on the direct path."""
    monkeypatch.setattr(wg, "WINOGRAD_MIN_CHANNELS", 1)
    model = randomize_model(build_segmentor(small_model_cfg(head))).eval()
    fast = optimize_for_inference(model)
    direct = optimize_for_inference(model, winograd=False)
    convs = [m for m in fast.modules() if isinstance(m, FrozenConv2d) and m.use_winograd]
    assert not any(isinstance(m, FrozenConv2d) and m.use_winograd for m in direct.modules())
    if not wg.HAS_WINOGRAD_KERNELS:
        assert not convs
        return
    calls, real = [], wg.conv3x3_winograd
    monkeypatch.setattr(wg, "conv3x3_winograd", lambda *a, **k: calls.append(1) or real(*a, **k))
    img = torch.rand(2, 3, 67, 93) * 255
    with torch.no_grad():
        want = model(img)
        got = fast(img)
    assert len(convs) >= 10 and len(calls) >= 10, (len(convs), len(calls))
    assert_max_abs("logits", got, want, tol=1e-4)
    assert "winograd=True" in repr(fast)


def test_winograd_weight_inverse_recovers_the_weight():
    w = torch.randn(12, 5, 3, 3, dtype=torch.float64)
    u = wg.winograd_weight_transform(w, groups=3)
    assert_max_abs("inverse", wg.winograd_weight_inverse(u, 3), w, tol=1e-12)
    u32 = wg.winograd_weight_transform(w.float(), groups=3)
    assert_max_abs("inverse fp32", wg.winograd_weight_inverse(u32, 3).double(), w, tol=5e-6)
