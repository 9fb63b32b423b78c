"""splat_bn_stats: bn0's batch statistics in one read of the conv output.

    var[k], mean[k] = biased variance and mean of x[:, k] over (B, H, W)

Returned in accumulation_dtype(x.dtype) (float32, float64 for float64 x), as BatchNorm keeps its statistics. The
C++ kernels (CPU and CUDA) sum deviations from each channel's first value in double (no E[x^2] - E[x]^2
cancellation) in one pass, where torch.var_mean on an NCHW tensor reduced over (0, 2, 3) is a strided reduction; the
Triton kernel merges per-tile means and squared deviations (Chan's update) in two deterministic stages. None casts
x to float32 as a whole. A GPU without the CUDA kernels or Triton uses the reference, torch.var_mean.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from resnest_fast.backend import training_op
from resnest_fast.op_rules import accumulation_dtype

__all__ = ["splat_bn_stats", "splat_bn_stats_reference"]


def splat_bn_stats_reference(x: Tensor) -> Tuple[Tensor, Tensor]:
    """(var, mean) of x (B, K, H, W) per channel, biased, in float32 (float64 for float64 x)."""
    return torch.var_mean(x.to(accumulation_dtype(x.dtype)), dim=(0, 2, 3), correction=0)


def splat_bn_stats(x: Tensor, backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """Per-channel (var, mean) of x (B, K, H, W) over (B, H, W); not differentiable (see SplitAttentionConv2d)."""
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (B, K, H, W), got {x.dim()}-D of shape {tuple(x.shape)}")
    if x.shape[0] * x.shape[2] * x.shape[3] == 0:
        raise ValueError(f"splat_bn_stats needs at least one value per channel, got x of shape {tuple(x.shape)}")
    op = training_op("splat_bn_stats", backend, x.device)
    return splat_bn_stats_reference(x) if op is None else op(x)
