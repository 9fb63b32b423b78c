"""Pieces shared by the split-attention ops: input checks (the same messages for every backend), the layout rule
of the kernels, and the fake-kernel / autograd registrations used for both the C++ ops and the Triton ops."""
from typing import Optional

import torch
from torch import Tensor

MAX_RADIX = 8  # csrc/ops/splat_math.h: kMaxRadix


def check_common(x: Tensor, scale: Optional[Tensor], shift: Optional[Tensor], radix: int) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (B, radix*C, H, W), got {x.dim()}-D of shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be floating point, got {x.dtype}")
    if not isinstance(radix, int) or not 1 <= radix <= MAX_RADIX:
        raise ValueError(f"radix must be an int in [1, {MAX_RADIX}], got {radix!r}")
    if x.shape[1] % radix:
        raise ValueError(f"x.shape[1] ({x.shape[1]}) must be divisible by radix ({radix})")
    if (scale is None) != (shift is None):
        raise ValueError("scale and shift must be given together (both tensors or both None)")
    if scale is None:
        return
    for name, t in (("scale", scale), ("shift", shift)):
        if t.dim() != 1 or t.shape[0] != x.shape[1]:
            raise ValueError(f"{name} must have shape (radix*C,) = ({x.shape[1]},), got {tuple(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
        if t.dtype not in (x.dtype, torch.float32):
            raise TypeError(f"{name} must have x's dtype ({x.dtype}) or float32, got {t.dtype}")
    if scale.dtype != shift.dtype:
        raise TypeError(f"scale ({scale.dtype}) and shift ({shift.dtype}) must have the same dtype")


def check_logits(x: Tensor, logits: Tensor, radix: int, groups: int) -> None:
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be an int >= 1, got {groups!r}")
    if x.shape[1] % (radix * groups):
        raise ValueError(f"x.shape[1] ({x.shape[1]}) must be divisible by radix*groups ({radix * groups})")
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a Tensor, got {type(logits).__name__}")
    if logits.dim() != 2 or tuple(logits.shape) != (x.shape[0], x.shape[1]):
        raise ValueError(
            f"logits must have shape (B, radix*C) = ({x.shape[0]}, {x.shape[1]}), got {tuple(logits.shape)}"
        )
    if logits.device != x.device:
        raise ValueError(f"logits is on {logits.device} but x is on {x.device}")
    if logits.dtype != x.dtype:
        raise TypeError(f"logits must have x's dtype ({x.dtype}), got {logits.dtype}")


def kernel_layout(x: Tensor) -> torch.memory_format:
    """The dense layout the kernels read x in (csrc/ops/splat_checks.h: splat_layout)."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


# ----------------------------------------------------------------------------------------------- fake kernels


def fake_pool(x, scale, shift, radix, relu):
    return x.new_empty((x.shape[0], x.shape[1] // radix))


def _param_grad_like(t, x):
    return x.new_empty((0,)) if t is None else t.new_empty(t.shape)


def fake_pool_backward(grad_gap, x, scale, shift, radix, relu):
    return (
        torch.empty_like(x, memory_format=kernel_layout(x)),
        _param_grad_like(scale, x),
        _param_grad_like(shift, x),
    )


def fake_combine(x, logits, scale, shift, radix, groups, relu):
    size = (x.shape[0], x.shape[1] // radix, x.shape[2], x.shape[3])
    return torch.empty(size, dtype=x.dtype, device=x.device, memory_format=kernel_layout(x))


def fake_combine_backward(grad_out, x, logits, scale, shift, radix, groups, relu):
    return (
        torch.empty_like(x, memory_format=kernel_layout(x)),
        torch.empty(logits.shape, dtype=logits.dtype, device=logits.device),
        _param_grad_like(scale, x),
        _param_grad_like(shift, x),
    )


# ---------------------------------------------------------------------------------------------------- autograd
# Only x (the conv output, which BatchNorm keeps anyway), the small logits and scale/shift are saved: the
# activated splits are recomputed by the backward kernels.


def _pool_setup_context(ctx, inputs, output):
    x, scale, shift, radix, relu = inputs
    ctx.save_for_backward(x, scale, shift)
    ctx.radix, ctx.relu = radix, relu


def _combine_setup_context(ctx, inputs, output):
    x, logits, scale, shift, radix, groups, relu = inputs
    ctx.save_for_backward(x, logits, scale, shift)
    ctx.radix, ctx.groups, ctx.relu = radix, groups, relu


def register(pool_op: str, pool_backward_op: str, combine_op: str, combine_backward_op: str) -> None:
    """Registers fake kernels for the four ops and autograd for the two forward ops."""
    torch.library.register_fake(pool_op)(fake_pool)
    torch.library.register_fake(pool_backward_op)(fake_pool_backward)
    torch.library.register_fake(combine_op)(fake_combine)
    torch.library.register_fake(combine_backward_op)(fake_combine_backward)
    pool_bwd = _op(pool_backward_op)
    combine_bwd = _op(combine_backward_op)

    def pool_backward(ctx, grad_gap):
        x, scale, shift = ctx.saved_tensors
        dx, dscale, dshift = pool_bwd(grad_gap, x, scale, shift, ctx.radix, ctx.relu)
        affine = scale is not None
        return dx, dscale if affine else None, dshift if affine else None, None, None

    def combine_backward(ctx, grad_out):
        x, logits, scale, shift = ctx.saved_tensors
        dx, dlogits, dscale, dshift = combine_bwd(
            grad_out, x, logits, scale, shift, ctx.radix, ctx.groups, ctx.relu
        )
        affine = scale is not None
        return dx, dlogits, dscale if affine else None, dshift if affine else None, None, None, None

    torch.library.register_autograd(pool_op, pool_backward, setup_context=_pool_setup_context)
    torch.library.register_autograd(combine_op, combine_backward, setup_context=_combine_setup_context)


def _op(qualname: str):
    ns, name = qualname.split("::")
    return getattr(getattr(torch.ops, ns), name).default
