"""GPU backends on CUDA tensors (`needs_cuda`: skipped where no GPU is present) and the real stage shapes of
ResNeSt-101-D8 on the CPU kernels (`heavy`: run with -m heavy). Same oracles as on the CPU: the reference in
float64 for pool and combine, torch.var_mean in float64 for bn_stats, torch.autograd of the unfused block in float64
for the fused backward (tests/ops/test_splat_kernel_paths.py, tests/nn/test_split_attention_backward.py).

Inputs reach the GPU with their strides (empty_strided(...).copy_()): `.to(device)` would make a strided view
contiguous and the strided cases would repeat the contiguous ones. Triton runs compiled here, never interpreted."""
import copy

import pytest
import torch

from resnest_fast import _extension as ext
from resnest_fast.backend import available_backends
from tests.ops.test_splat_kernel_paths import (
    SHAPES as LOOP_SHAPES,
    assert_bn_stats_match_float64,
    assert_fused_backward_is_the_gradient,
    assert_twice_torch_error,
    backward_inputs,
    fused_gradients,
    strided_like,
)
from tests.ops.test_splat_ops import RADIX_GROUPS, compare_with_reference, detached_copy, make_inputs, names, run

GPU_BACKENDS = ["cuda", "triton"]
GPU_SHAPES = [(2, 8, 7, 9), (1, 4, 1, 1), (2, 64, 33, 65), LOOP_SHAPES[0]]


def on(device, tensors, requires_grad=True):
    """The tensors on `device` with the same sizes and strides (a strided view stays strided)."""
    out = []
    for t in tensors:
        if t is None:
            out.append(None)
            continue
        moved = torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device=device).copy_(t.detach())
        assert moved.stride() == t.stride()
        out.append(moved.requires_grad_(requires_grad) if t.is_floating_point() else moved)
    return out


def require(backend):
    if backend not in available_backends("cuda"):
        pytest.skip(f"backend {backend!r} is not available for CUDA tensors in this build")
    if backend == "triton":
        assert not ext.triton_interpreting(), "TRITON_INTERPRET=1 with a GPU present: Triton would not be compiled"


@pytest.mark.needs_cuda
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("radix,groups", RADIX_GROUPS + [(3, 1)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "non_contiguous"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", GPU_SHAPES)
def test_gpu_backends_against_reference(backend, radix, groups, layout, dtype, shape):
    require(backend)
    b, c, h, w = shape
    cpu_inputs = make_inputs(shape, radix, layout, dtype, True, requires_grad=False)
    x, logits, scale, shift = on("cuda", cpu_inputs)
    if layout == "non_contiguous":
        assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    grad_gap = torch.randn(b, c, dtype=dtype, device="cuda")
    grad_out = torch.randn(b, c, h, w, dtype=dtype, device="cuda")
    compare_with_reference(backend, x, logits, scale, shift, radix, groups, grad_gap, grad_out)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "non_contiguous"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2, 6, 7, 9), (2, 32, 25, 27), (1, 64, 33, 65), (8, 256, 64, 64)])
def test_gpu_bn_stats_against_float64(layout, dtype, shape):
    """The CUDA splat_bn_stats on data whose mean dwarfs its spread, within twice torch's own error in the
    accumulation dtype of float64 var_mean (the large shape: many blocks per channel, the two-stage reduction)."""
    if not ext.TRAINING_KERNELS["cuda"]:
        pytest.skip("resnest_fast._C was built without the CUDA training kernels")
    x_cpu = strided_like((torch.randn(shape, dtype=torch.float64) * 0.5 + 100.0).to(dtype), layout)
    (x,) = on("cuda", [x_cpu], requires_grad=False)
    assert_bn_stats_match_float64(x, "cuda")


@pytest.mark.needs_cuda
@pytest.mark.parametrize("radix,groups", [(1, 1), (2, 1), (4, 2)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "non_contiguous"])
@pytest.mark.parametrize("form", ["fp32", "bf16", "autocast_bf16"])
@pytest.mark.parametrize("batch_stats", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [LOOP_SHAPES[0], (2, 64, 33, 65)])
def test_gpu_fused_backward_is_the_gradient(radix, groups, layout, form, batch_stats, shape):
    """splat_bn_stats, splat_backward_reduce and splat_backward_input of the CUDA build against float64 autograd of
    the unfused block (the CPU test's composition, tests/ops/test_splat_kernel_paths.py)."""
    if not ext.TRAINING_KERNELS["cuda"]:
        pytest.skip("resnest_fast._C was built without the CUDA training kernels")
    cpu_args = backward_inputs(shape, radix, groups, layout, form, batch_stats)
    args = tuple(on("cuda", cpu_args[:8], requires_grad=False)) + cpu_args[8:]
    if layout == "non_contiguous":
        assert not args[0].is_contiguous() and not args[0].is_contiguous(memory_format=torch.channels_last)
    assert_fused_backward_is_the_gradient(fused_gradients(*args, backend="cuda"), args)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("form", ["fp32", "bf16", "autocast_bf16"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_gpu_module_backward_is_the_gradient(backend, channels_last, form, train):
    """The module on CUDA, forward and every gradient (train: the fused two-pass backward with bn0's batch
    statistics for backend="cuda"), against torch.autograd of mmseg's unfused block in float64 on the CPU."""
    from benchmarks.providers import eager_post_conv
    from tests.nn.test_split_attention_backward import block, outputs_and_grads

    require(backend)
    module = block(4, 2).train(train)
    module.bn1.eval()  # as on the CPU (tests/nn/test_split_attention_backward.py)
    module.backend = backend
    y = torch.randn(2, 64, 25, 27)
    grad = torch.randn(2, 16, 25, 27, dtype=torch.float64)
    if channels_last:
        y = y.contiguous(memory_format=torch.channels_last)
        grad = grad.contiguous(memory_format=torch.channels_last)
    dtype = torch.float32 if form == "fp32" else torch.bfloat16
    autocast = form == "autocast_bf16"
    tested = module.to(torch.bfloat16) if form == "bf16" else module
    tested_gpu = copy.deepcopy(tested).cuda()
    (y_gpu, grad_gpu) = on("cuda", [y.to(dtype), grad], requires_grad=False)
    got, grad_fn = outputs_and_grads(lambda m, t: m.attend(t), tested_gpu, y_gpu, grad_gpu, autocast)
    if backend == "cuda" and ext.TRAINING_KERNELS["cuda"]:
        assert grad_fn == "_FusedSplitAttentionBackward", grad_fn
    same, _ = outputs_and_grads(eager_post_conv, tested_gpu, y_gpu, grad_gpu, autocast)
    # float64 from the tested (rounded) parameters and input
    ref64, _ = outputs_and_grads(eager_post_conv, copy.deepcopy(tested).double(), y.to(dtype).double(), grad, False)
    names_ = ["out", "grad y"] + [f"grad {n}" for n, _ in module.named_parameters() if not n.startswith("conv")]
    for name, g, s_, r in zip(names_, got, same, ref64):
        assert g.device.type == "cuda", name
        assert_twice_torch_error(name, g.cpu(), s_.cpu(), r, floor_dtype=dtype)


@pytest.mark.heavy
@pytest.mark.skipif(not ext.HAS_CPU_KERNELS, reason="resnest_fast._C was not built")
@pytest.mark.parametrize("shape,radix,groups", [
    ((2, 64, 128, 256), 2, 1),   # layer1 of ResNeSt-101-D8 at the 512x1024 Cityscapes crop
    ((2, 256, 64, 128), 2, 1),   # layer3/4 (dilated, stride 8)
    ((1, 128, 64, 64), 4, 2),    # radix 4, cardinality 2 at a large map
])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_stage_shapes_cpu(shape, radix, groups, layout):
    b, c, h, w = shape
    x, logits, scale, shift = make_inputs(shape, radix, layout, torch.float32, True)
    grad_gap, grad_out = torch.randn(b, c), torch.randn(b, c, h, w)
    got = run("cpu", x, logits, scale, shift, radix, groups, True, grad_gap, grad_out)
    ref = run("reference", *(detached_copy(t) for t in (x, logits, scale, shift)), radix, groups, True, grad_gap,
              grad_out)
    for name, g, r in zip(names(True), got, ref):
        # sums over up to 2*128*256 terms: fp32 rounding grows with the count
        torch.testing.assert_close(g, r, atol=1e-3 * max(1.0, r.abs().max().item()), rtol=1e-4)
