"""splat_combine: the attention-weighted sum of the radix splits, activating them on the fly.

    out[b, c, h, w] = sum over r of a[b, r, c] * act(x[b, r*C + c, h, w]),   act(v) = relu(v*scale + shift)
    a[b, :, c] = softmax over r of logits[b, (g*R + r)*(C/G) + i]   (c = g*(C/G) + i; sigmoid when R == 1)

The logits (B, R*C) are fc2's output laid out as mmseg's rSoftMax reads them, [groups][radix][C/groups], while
the features are split [radix][C]: with groups == 1 the two readings agree, with groups > 1 they do not.
"""
from typing import Optional

import torch
from torch import Tensor

from resnest_fast.backend import resolve_backend
from resnest_fast.op_rules import check_common, check_logits, kernel_layout
from resnest_fast.ops.splat_pool import activate_reference

__all__ = ["splat_combine", "splat_combine_reference", "attention_weights_reference"]


def attention_weights_reference(logits: Tensor, radix: int, groups: int) -> Tensor:
    """mmseg's rSoftMax, returned as (B, R, C): weight of split r for channel c."""
    b, rc = logits.shape
    if radix == 1:
        return torch.sigmoid(logits).view(b, 1, rc)
    att = logits.view(b, groups, radix, rc // (groups * radix)).transpose(1, 2).softmax(dim=1)
    return att.reshape(b, radix, rc // radix)


def splat_combine_reference(
    x: Tensor,
    logits: Tensor,
    scale: Optional[Tensor] = None,
    shift: Optional[Tensor] = None,
    radix: int = 2,
    groups: int = 1,
    relu: bool = True,
) -> Tensor:
    """Pure-PyTorch splat_combine (the fallback and the oracle of the tests): -> (B, C, H, W)."""
    b, rc, h, w = x.shape
    act = activate_reference(x, scale, shift, relu).view(b, radix, rc // radix, h, w)
    att = attention_weights_reference(logits, radix, groups)
    out = (att[..., None, None] * act).sum(1).to(x.dtype)
    return out.contiguous(memory_format=kernel_layout(x))  # the kernels' output layout


def splat_combine(
    x: Tensor,
    logits: Tensor,
    scale: Optional[Tensor] = None,
    shift: Optional[Tensor] = None,
    radix: int = 2,
    groups: int = 1,
    relu: bool = True,
    backend: Optional[str] = None,
) -> Tensor:
    """Fused combine of split attention: x (B, radix*C, H, W), logits (B, radix*C) -> out (B, C, H, W).

    Args:
        x: the grouped conv's output, any layout; out has x's layout when x is channels_last, else NCHW.
        logits: fc2's output flattened, [groups][radix][C/groups], x's dtype.
        scale, shift: (radix*C,) per-channel affine applied before the ReLU (x's dtype or float32), or None.
        radix, groups: the split attention's radix and cardinality.
        relu: apply ReLU after the affine.
        backend: None (the default backend), "auto", "cpu", "cuda", "triton" or "reference".
    Differentiable in x, logits, scale and shift.
    """
    check_common(x, scale, shift, radix)
    check_logits(x, logits, radix, groups)
    impl = resolve_backend(backend, x.device)
    if impl == "reference":
        return splat_combine_reference(x, logits, scale, shift, radix, groups, relu)
    if impl == "triton":
        return torch.ops.resnest_fast.triton_splat_combine(x, logits, scale, shift, radix, groups, relu)
    return torch.ops.resnest_fast.splat_combine(x, logits, scale, shift, radix, groups, relu)
