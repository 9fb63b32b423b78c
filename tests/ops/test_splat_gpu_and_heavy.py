"""GPU backends on CUDA tensors (`needs_cuda`: skipped where no GPU is present) and the real stage shapes of
ResNeSt-101-D8 on the CPU kernels (`heavy`: run with -m heavy). Same oracle as everywhere: the reference."""
import pytest
import torch

from resnest_fast import _extension as ext
from resnest_fast.backend import available_backends
from tests.ops.test_splat_ops import RADIX_GROUPS, compare_with_reference, detached_copy, make_inputs, names, run


def on(device, tensors):
    return [None if t is None else t.detach().to(device).requires_grad_(True) for t in tensors]


@pytest.mark.needs_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("radix,groups", RADIX_GROUPS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "non_contiguous"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2, 8, 7, 9), (1, 4, 1, 1), (2, 64, 33, 65)])
def test_gpu_backends_against_reference(backend, radix, groups, layout, dtype, shape):
    if backend not in available_backends("cuda"):
        pytest.skip(f"backend {backend!r} is not available for CUDA tensors in this build")
    b, c, h, w = shape
    x, logits, scale, shift = on("cuda", make_inputs(shape, radix, layout, dtype, True, requires_grad=False))
    if layout == "channels_last":
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    grad_gap = torch.randn(b, c, dtype=dtype, device="cuda")
    grad_out = torch.randn(b, c, h, w, dtype=dtype, device="cuda")
    compare_with_reference(backend, x, logits, scale, shift, radix, groups, grad_gap, grad_out)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("train", [False, True])
def test_gpu_module_matches_cpu_module(train):
    """The module on CUDA (whatever backend auto picks) against the same module's reference path on the CPU."""
    from tests.nn.test_split_attention import pair

    _, ours = pair(32, 16, 4, 2, 1, 1)
    ref = ours.__class__(32, 16, 3, padding=1, radix=4, groups=2, backend="reference")
    ref.load_state_dict(ours.state_dict())
    ours = ours.cuda().train(train)
    ref.train(train)
    x = torch.randn(4, 32, 9, 7)
    out = ours(x.cuda().requires_grad_(True))
    out_ref = ref(x.requires_grad_(True))
    torch.testing.assert_close(out.cpu(), out_ref, atol=1e-4, rtol=1e-4)


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
