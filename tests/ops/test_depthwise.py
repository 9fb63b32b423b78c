"""Dilated depthwise 3x3 convolution (resnest_fast.ops.depthwise): the C++ kernel against F.conv2d in float64 over
dilations (up to larger than the image, where only the centre tap is left), odd sizes and channel counts, both input
layouts, bias and ReLU; its registration (opcheck); bad input; and the optimized DeepLabV3+ using it."""
import pytest
import torch
import torch.nn.functional as F

from resnest_fast import optimize_for_inference
from resnest_fast.ops import depthwise as dw
from resnest_fast.optimize import FrozenConv2d
from resnest_fast.segmentation import build_segmentor
from resnest_fast.testing.small_models import small_model_cfg
from resnest_fast.testing.tolerances import assert_max_abs
from tests.parity import randomize_model

needs_kernel = pytest.mark.skipif(not dw.HAS_DEPTHWISE_KERNEL, reason="resnest_fast._C without depthwise_conv3x3")
# (B, C, H, W, dilation): odd sizes and channel counts, a 1x1 image, dilation past the height only, past both
CASES = [(1, 13, 7, 9, 1), (2, 16, 11, 6, 2), (1, 5, 1, 1, 1), (2, 33, 9, 17, 12), (1, 8, 4, 5, 36), (3, 7, 8, 8, 3)]


def _inputs(b, c, h, w, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(c, 1, 3, 3, generator=g, dtype=torch.float64) / 3
    bias = torch.randn(c, generator=g, dtype=torch.float64)
    return x.to(dtype), weight.to(dtype), bias.to(dtype)


@needs_kernel
@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}c{}-{}x{}-d{}".format(*c))
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("bias, relu", [(True, True), (False, False)])
def test_kernel_matches_float64_conv(case, layout, bias, relu):
    b, c, h, w, d = case
    x, weight, bias_t = _inputs(b, c, h, w)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    bias_t = bias_t if bias else None
    got = dw.depthwise_conv3x3(x, weight, bias_t, d, relu)
    want = F.conv2d(x.double(), weight.double(), None if bias_t is None else bias_t.double(), 1, d, d, c)
    if relu:
        want = want.relu()
    assert got.is_contiguous(memory_format=torch.channels_last) and got.dtype == torch.float32
    # nine products per output: the rule's floor (2x the fp32 reference's own error) plus a few ulps
    ref32 = dw.depthwise_conv3x3_reference(x, weight, bias_t, d, relu)
    bound = 2 * (ref32.double() - want).abs().max().item() + 4e-7 * max(1.0, want.abs().max().item())
    assert_max_abs(f"{case} {layout}", got.double(), want, tol=bound)


@needs_kernel
def test_float64_is_the_convolution_to_rounding():
    x, weight, bias = _inputs(2, 9, 10, 7, dtype=torch.float64)
    got = dw.depthwise_conv3x3(x, weight, bias, 2, True)
    torch.testing.assert_close(got, F.conv2d(x, weight, bias, 1, 2, 2, 9).relu(), rtol=1e-13, atol=1e-13)


@needs_kernel
def test_opcheck():
    x, weight, bias = _inputs(2, 6, 5, 7)
    torch.library.opcheck(torch.ops.resnest_fast.depthwise_conv3x3.default, (x, weight, bias, 2, True))


def test_bad_input_names_the_argument():
    x, weight, bias = _inputs(1, 4, 5, 5)
    with pytest.raises(ValueError, match=r"weight must be \(C, 1, 3, 3\) = \(4, 1, 3, 3\)"):
        dw.depthwise_conv3x3(x, weight[:3], bias)
    with pytest.raises(ValueError, match="dilation must be >= 1"):
        dw.depthwise_conv3x3(x, weight, bias, 0)
    if dw.HAS_DEPTHWISE_KERNEL:
        with pytest.raises(RuntimeError, match="weight must be .* of x's dtype"):
            torch.ops.resnest_fast.depthwise_conv3x3(x, weight.double(), bias, 1, False)
        with pytest.raises(RuntimeError, match=r"bias must be \(4,\)"):
            torch.ops.resnest_fast.depthwise_conv3x3(x, weight, bias[:2], 1, False)


@needs_kernel
def test_optimized_deeplabv3plus_runs_its_dilated_depthwise_convs_on_the_kernel():
    torch.manual_seed(0)
    model = randomize_model(build_segmentor(small_model_cfg("deeplabv3plus"))).eval()
    fast = optimize_for_inference(model)
    dws = [m for m in fast.modules() if isinstance(m, FrozenConv2d) and m.depthwise3x3]
    assert len(dws) == 3 and "depthwise3x3=True" in repr(dws[0])  # the three dilated branches of the ASPP
    calls = []
    for m in dws:
        m.register_forward_hook(lambda mod, inp, out: calls.append(out.is_contiguous(memory_format=torch.channels_last)))
    img = torch.rand(1, 3, 64, 96) * 255
    with torch.no_grad():
        want, got = model(img), fast(img)
    assert calls == [True] * 3
    assert_max_abs("deeplabv3plus", got, want, tol=1e-3)
