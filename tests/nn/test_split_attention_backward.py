"""SplitAttentionConv2d's fused training backward (_FusedSplitAttention: splat_backward_reduce, the attention MLP
recomputed, bn0's chain rule, splat_backward_input) against torch.autograd of mmseg's unfused block in float64,
without mmseg: the module's own submodules run mmseg's forward after the conv (benchmarks/providers.py's
eager_post_conv). The C++ CPU kernels and the Triton kernels (under Triton's interpreter here, compiled on a GPU);
NCHW and channels_last, train (batch statistics) and eval, fp32, bf16 and autocast-bf16; the
rule is flash-attention's: our error at most twice that of torch's unfused block in the same dtype, plus a floor
(tests/ops/test_splat_kernel_paths.py).

tests/nn/test_split_attention.py compares with mmseg's real module; this file needs no reference package, runs
every layout and precision, and uses a feature map of 675 positions (every loop of the CPU kernels) on two
threads.
"""
import copy

import pytest
import torch

from benchmarks.providers import eager_post_conv
from resnest_fast import _extension as ext
from resnest_fast.backend import available_backends
from resnest_fast.nn import SplitAttentionConv2d
from tests.ops.test_splat_kernel_paths import assert_twice_torch_error
from tests.parity import randomize

FORMS = ["fp32", "bf16", "autocast_bf16"]
RADIX_GROUPS = [(2, 1), (4, 2)]
BACKENDS = [
    pytest.param("cpu", marks=pytest.mark.skipif(not ext.TRAINING_KERNELS["cpu"],
                                                 reason="resnest_fast._C was built without the training kernels")),
    pytest.param("triton", marks=pytest.mark.skipif("triton" not in available_backends("cpu"),
                                                    reason="Triton's interpreter cannot run here")),
]


def block(radix, groups, channels=16, backend="cpu"):
    torch.manual_seed(0)
    module = SplitAttentionConv2d(channels, channels, 3, padding=1, radix=radix, groups=groups, reduction_factor=4,
                                  norm_cfg=dict(type="BN"), backend=backend)
    return randomize(module)


def outputs_and_grads(attend, module, y, grad, autocast):
    """[out, grad y, grad of every parameter after the conv] of attend(module, y) with upstream gradient grad."""
    module = copy.deepcopy(module)  # train mode updates bn0's running statistics: every run starts equal
    params = [p for name, p in module.named_parameters() if not name.startswith("conv")]
    y = y.detach().clone().requires_grad_(True)
    with torch.autocast(y.device.type, dtype=torch.bfloat16, enabled=autocast):
        out = attend(module, y)
    grads = torch.autograd.grad(out, [y] + params, grad.to(out.dtype))
    return [out.detach()] + list(grads), type(out.grad_fn).__name__


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("radix,groups", RADIX_GROUPS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_fused_module_backward_is_the_gradient(backend, radix, groups, channels_last, form, train, two_threads):
    if backend == "triton" and form != "fp32":
        pytest.skip("Triton's interpreter truncates float32 -> bfloat16 where compiled kernels round to nearest "
                    "(its _convert_float): bf16 outputs are an ulp off; benchmarks/gpu_check.py checks them compiled")
    module = block(radix, groups, backend=backend).train(train)
    # bn1 keeps running statistics: normalising the (B, C/4) attention vector over a small batch amplifies every
    # rounding of the logits' gradient into noise above the differences under test (and makes fc1.bias's
    # gradient exactly zero); test_split_attention.py checks bn1's batch statistics against mmseg's module
    module.bn1.eval()
    b, rc, h, w = 2, radix * 16, 25, 27
    y = torch.randn(b, rc, h, w)
    grad = torch.randn(b, 16, h, w, dtype=torch.float64)
    if channels_last:
        y = y.contiguous(memory_format=torch.channels_last)
        grad = grad.contiguous(memory_format=torch.channels_last)
    dtype = torch.float32 if form == "fp32" else torch.bfloat16
    autocast = form == "autocast_bf16"
    y = y.to(dtype)
    tested = module.to(torch.bfloat16) if form == "bf16" else module
    got, grad_fn = outputs_and_grads(lambda m, t: m.attend(t), tested, y, grad, autocast)
    assert grad_fn == "_FusedSplitAttentionBackward", f"the fused backward did not run ({grad_fn})"
    same, _ = outputs_and_grads(eager_post_conv, tested, y, grad, autocast)
    # float64 from the tested (rounded) parameters and input
    ref64, _ = outputs_and_grads(eager_post_conv, copy.deepcopy(tested).double(), y.double(), grad, False)
    names = ["out", "grad y"] + [f"grad {n}" for n, _ in module.named_parameters() if not n.startswith("conv")]
    for name, g, s, r in zip(names, got, same, ref64):
        assert_twice_torch_error(name, g, s, r, floor_dtype=dtype)
