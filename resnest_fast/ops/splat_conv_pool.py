"""splat_conv_pool: split attention's grouped conv with bn0 + ReLU, returning the activation and its global context.

    y[b, k]   = relu(conv2d(x, weight, stride 1, padding = dilation, dilation, groups = radix*groups)[b, k]
                     * scale[k] + shift[k])                                                      (B, radix*C, H, W)
    gap[b, c] = mean over (h, w) of sum over r of y[b, r*C + c]                                  (B, C)

x (B, Cin, H, W); weight (radix*C, Cin/(radix*groups), 3, 3) is mmseg's SplitAttentionConv2d.conv (no bias); scale
and shift (radix*C,) are bn0 folded in eval. Inference only. The fused version (Triton: one implicit-GEMM conv whose
epilogue writes y and the pool's partial sums, resnest_fast/kernels/splat_conv.py) is not on the modules' path: the
modules run the conv in cuDNN / oneDNN and then splat_pool / splat_combine.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from resnest_fast import _extension as ext
from resnest_fast.backend import get_default_backend, normalize_backend, resolve_backend
from resnest_fast.op_rules import check_conv_pool
from resnest_fast.ops.splat_pool import activate_reference, splat_pool_reference

__all__ = ["splat_conv_pool", "splat_conv_pool_reference"]


def splat_conv_pool_reference(
    x: Tensor, weight: Tensor, scale: Tensor, shift: Tensor, radix: int = 2, groups: int = 1, dilation: int = 1
) -> Tuple[Tensor, Tensor]:
    """Pure PyTorch (the oracle of the tests and of benchmarks/gpu_check.py): F.conv2d, then splat_pool's own
    references on the conv output. (y in x's dtype, gap in x's dtype)."""
    check_conv_pool(x, weight, scale, shift, radix, groups, dilation)
    conv = F.conv2d(x, weight, None, 1, dilation, dilation, radix * groups)
    y = activate_reference(conv, scale, shift, True).to(x.dtype)
    return y, splat_pool_reference(conv, scale, shift, radix, True)


def _implementation(backend: Optional[str], x: Tensor) -> str:
    """"triton" or "reference": the op has no C++ kernel, so a default backend of "cpu"/"cuda" means auto's choice,
    and an explicit one is an error."""
    name = normalize_backend(backend, "backend")
    if name in ("cpu", "cuda"):
        raise ValueError(f"splat_conv_pool has no C++ kernel: backend must be None, 'auto', 'triton' or "
                         f"'reference', got {backend!r}")
    name = name or get_default_backend()
    if name in ("auto", "cpu", "cuda"):
        return "triton" if x.is_cuda and ext.HAS_TRITON else "reference"
    return resolve_backend(name, x.device)


def splat_conv_pool(
    x: Tensor,
    weight: Tensor,
    scale: Tensor,
    shift: Tensor,
    radix: int = 2,
    groups: int = 1,
    dilation: int = 1,
    backend: Optional[str] = None,
) -> Tuple[Tensor, Tensor]:
    """Fused split-attention conv: x (B, Cin, H, W) -> (y (B, radix*C, H, W), gap (B, C)), both in x's dtype.

    Args:
        x: the conv input, any layout; y comes out channels_last when x is (kernel_layout).
        weight: (radix*C, Cin/(radix*groups), 3, 3), x's dtype; stride 1, padding = dilation, no bias.
        scale, shift: (radix*C,) bn0 folded (eval), x's dtype or float32.
        radix, groups: the split-attention radix and cardinality; the conv has radix*groups groups.
        dilation: the conv's dilation (ResNeSt-D8: 1, 2 or 4).
        backend: None / "auto" (Triton on CUDA tensors, else the reference), "triton" or "reference".
    Inference only: raises if an input requires grad while grad mode is on.
    """
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, weight, scale, shift)):
        raise RuntimeError("splat_conv_pool is inference-only (no backward): call it under torch.no_grad() or "
                           "torch.inference_mode(), or with inputs that do not require grad")
    check_conv_pool(x, weight, scale, shift, radix, groups, dilation)
    if _implementation(backend, x) == "reference":
        return splat_conv_pool_reference(x, weight, scale, shift, radix, groups, dilation)
    y, gap = torch.ops.resnest_fast.triton_splat_conv_pool(x, weight, scale, shift, radix, groups, dilation)
    return y, gap
