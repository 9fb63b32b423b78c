"""splat_pool: the global context of split attention, pooled without writing the activated tensor.

    gap[b, c] = mean over (h, w) of sum over r of act(x[b, r*C + c, h, w]),   act(v) = relu(v*scale + shift)

x (B, radix*C, H, W) is the grouped conv's output, its channels split [radix][C]; scale and shift (radix*C,) are
bn0 folded (eval) or with batch statistics (train), or None for no affine; `relu` applies mmseg's ReLU.
Equivalent to mmseg's `relu(bn0(x)).view(B, radix, C, H, W).sum(1)` followed by `adaptive_avg_pool2d(., 1)`.
"""
from typing import Optional

import torch
from torch import Tensor

from resnest_fast.backend import resolve_backend
from resnest_fast.op_rules import check_common

__all__ = ["splat_pool", "splat_pool_reference", "activate_reference"]


def activate_reference(x: Tensor, scale: Optional[Tensor], shift: Optional[Tensor], relu: bool) -> Tensor:
    """relu(x*scale + shift) per channel of x (B, K, H, W), in the promoted dtype of x and scale."""
    if scale is not None:
        x = x * scale[:, None, None] + shift[:, None, None]
    return torch.relu(x) if relu else x


def splat_pool_reference(
    x: Tensor, scale: Optional[Tensor] = None, shift: Optional[Tensor] = None, radix: int = 2, relu: bool = True
) -> Tensor:
    """Pure-PyTorch splat_pool (the fallback and the oracle of the tests): x (B, R*C, H, W) -> (B, C)."""
    b, rc, h, w = x.shape
    if h * w == 0 and b * rc > 0:
        raise ValueError(f"splat_pool needs H*W > 0 (the mean over no positions is undefined), got x of shape "
                         f"{tuple(x.shape)}")
    act = activate_reference(x, scale, shift, relu)
    return act.view(b, radix, rc // radix, h, w).sum(1).mean((2, 3)).to(x.dtype)


def splat_pool(
    x: Tensor,
    scale: Optional[Tensor] = None,
    shift: Optional[Tensor] = None,
    radix: int = 2,
    relu: bool = True,
    backend: Optional[str] = None,
) -> Tensor:
    """Fused pool of split attention: x (B, radix*C, H, W) -> gap (B, C), in x's dtype.

    Args:
        x: the grouped conv's output, any layout (NCHW and channels_last are read in place).
        scale, shift: (radix*C,) per-channel affine applied before the ReLU (x's dtype or float32), or None.
        radix: number of splits R; channel r*C + c of x is split r of channel c.
        relu: apply ReLU after the affine.
        backend: None (the default backend), "auto", "cpu", "cuda", "triton" or "reference".
    Differentiable in x, scale and shift.
    """
    check_common(x, scale, shift, radix)
    impl = resolve_backend(backend, x.device)
    if impl == "reference":
        return splat_pool_reference(x, scale, shift, radix, relu)
    if impl == "triton":
        return torch.ops.resnest_fast.triton_splat_pool(x, scale, shift, radix, relu)
    return torch.ops.resnest_fast.splat_pool(x, scale, shift, radix, relu)
