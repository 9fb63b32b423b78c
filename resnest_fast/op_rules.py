"""What every implementation of the fused split-attention ops agrees on: the radix bound, the accumulation dtype,
the input checks (one message per mistake, whatever the backend runs) and the layout the kernels read x in.

A leaf outside resnest_fast.ops on purpose: the ops package registers the Triton ops, which import these rules, so
a module inside it would make `import resnest_fast.kernels.splat` run ops/__init__ first, a circle. It imports
nothing of resnest_fast. The C++ kernels keep the same rules in csrc/ops/splat_math.h (kMaxRadix) and
csrc/ops/splat_checks.h (the checks, splat_layout).
"""
from typing import Optional

import torch
from torch import Tensor

__all__ = [
    "MAX_RADIX", "accumulation_dtype", "check_affine", "check_common", "check_conv_pool", "check_logits",
    "kernel_layout",
]

# The attention weights of one channel live in registers / on the stack of the kernels: must equal kMaxRadix.
MAX_RADIX = 8


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums and statistics are kept in for tensors of `dtype`: float64 for float64, else float32 (so
    float16 and bfloat16 accumulate in float32, at::opmath_type's rule; float64 keeps gradcheck exact)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_common(x: Tensor, scale: Optional[Tensor], shift: Optional[Tensor], radix: int) -> None:
    """x (B, radix*C, H, W) floating point, radix in [1, MAX_RADIX], scale/shift both None or both (radix*C,) on
    x's device in x's dtype or float32."""
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
    if scale is not None:
        check_affine(scale, shift, x.shape[1], x)


def check_affine(scale: Tensor, shift: Tensor, channels: int, x: Tensor) -> None:
    """scale and shift (channels,) on x's device, in x's dtype or float32 (bn0 folded under a half conv)."""
    for name, t in (("scale", scale), ("shift", shift)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
        if t.dim() != 1 or t.shape[0] != channels:
            raise ValueError(f"{name} must have shape (radix*C,) = ({channels},), got {tuple(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
        if t.dtype not in (x.dtype, torch.float32):
            raise TypeError(f"{name} must have x's dtype ({x.dtype}) or float32, got {t.dtype}")
    if scale.dtype != shift.dtype:
        raise TypeError(f"scale ({scale.dtype}) and shift ({shift.dtype}) must have the same dtype")


def check_conv_pool(
    x: Tensor, weight: Tensor, scale: Tensor, shift: Tensor, radix: int, groups: int, dilation: int
) -> None:
    """The split-attention conv of splat_conv_pool: x (B, Cin, H, W) floating point, weight
    (radix*C, Cin/(radix*groups), 3, 3) in x's dtype on x's device (conv groups = radix*groups, mmseg's
    SplitAttentionConv2d), dilation >= 1 (stride 1, padding = dilation), scale/shift (radix*C,) as check_affine."""
    if not isinstance(x, Tensor) or not isinstance(weight, Tensor):
        raise TypeError(f"x and weight must be Tensors, got {type(x).__name__} and {type(weight).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (B, Cin, H, W), got {x.dim()}-D of shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be floating point, got {x.dtype}")
    if not isinstance(radix, int) or not 1 <= radix <= MAX_RADIX:
        raise ValueError(f"radix must be an int in [1, {MAX_RADIX}], got {radix!r}")
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be an int >= 1, got {groups!r}")
    if not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"dilation must be an int >= 1, got {dilation!r}")
    conv_groups = radix * groups
    if x.shape[1] % conv_groups:
        raise ValueError(f"x.shape[1] ({x.shape[1]}) must be divisible by radix*groups ({conv_groups})")
    if weight.dim() != 4 or tuple(weight.shape[1:]) != (x.shape[1] // conv_groups, 3, 3):
        raise ValueError(f"weight must have shape (radix*C, {x.shape[1] // conv_groups}, 3, 3), got "
                         f"{tuple(weight.shape)}")
    if weight.shape[0] % conv_groups:
        raise ValueError(f"weight.shape[0] ({weight.shape[0]}) must be divisible by radix*groups ({conv_groups})")
    if weight.device != x.device:
        raise ValueError(f"weight is on {weight.device} but x is on {x.device}")
    if weight.dtype != x.dtype:
        raise TypeError(f"weight must have x's dtype ({x.dtype}), got {weight.dtype}")
    check_affine(scale, shift, weight.shape[0], x)


def check_logits(x: Tensor, logits: Tensor, radix: int, groups: int) -> None:
    """logits (B, radix*C) on x's device in x's dtype, and radix*groups dividing x's channels."""
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
    """The dense layout the kernels read x in, and write x-sized outputs in: channels_last when x is dense in it
    (and not also NCHW-contiguous), else NCHW. Fake kernels and references follow it so strides agree."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
