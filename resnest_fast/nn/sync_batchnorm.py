"""SyncBatchNorm that also synchronises CPU tensors (the gloo backend), for distributed training without a GPU.

torch's nn.SyncBatchNorm raises on CPU tensors as soon as torch.distributed is initialised (even in a group of
one). This subclass keeps torch's implementation for CUDA (and the other devices torch serves) and runs CPU
tensors through `sync_batch_norm`, an autograd Function of plain torch ops and torch.distributed collectives:

forward: each process reduces its (B, C, *) input to per-channel count, sum and sum of squares, one all_reduce adds
  them, and every process normalises with the statistics of the whole distributed batch. The local terms come
  from a two-pass computation (local mean, then squared deviations from it) accumulated in float64, so that
  sum(x^2)/N - mean^2 does not lose the variance to cancellation when |mean| >> std.
backward: with xmu = x - mean, the per-channel sums of dy and dy * xmu are all-reduced (a second collective), and
  dx = (dy - sum(dy)/N - xmu * invstd^2 * sum(dy * xmu)/N) * invstd * weight, which is BatchNorm's input gradient
  on the combined batch. The weight and bias gradients stay local, as in torch's SyncBatchNorm: DistributedDataParallel
  averages them with every other parameter gradient.
Running statistics are updated as nn.BatchNorm2d does on the combined batch (unbiased variance, momentum or the
cumulative average when momentum is None), identically on every process. In eval mode, or when no process group of
more than one process exists, this is a plain BatchNorm.

The class is a subclass of nn.SyncBatchNorm (isinstance checks, mmengine's revert_sync_batchnorm and the like see a
SyncBN) with its arguments, parameters and buffers (state_dicts are BatchNorm's). torch's DistributedDataParallel
refuses every nn.SyncBatchNorm in a CPU module, this one included, so a CPU model with it is wrapped in this module's
DistributedDataParallel, which lets these layers through and refuses torch's own as before.
`build_norm(dict(type='SyncBN'))` builds it.
"""
import inspect
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from resnest_fast.op_rules import accumulation_dtype
from resnest_fast.utils import distributed_world_size

__all__ = ["SyncBatchNorm", "sync_batch_norm", "DistributedDataParallel"]

# Devices whose tensors torch's own SyncBatchNorm synchronises.
_TORCH_SYNC_DEVICES = ("cuda", "hpu", "xpu")


def _reduce_dims(x: Tensor):
    return [0] + list(range(2, x.dim()))


def _channel_view(v: Tensor, x: Tensor) -> Tensor:
    return v.view([1, -1] + [1] * (x.dim() - 2))


class _SyncBatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, group):
        dims = _reduce_dims(x)
        channels = x.shape[1]
        count = x.numel() // channels
        stat_dtype = accumulation_dtype(x.dtype)
        # Local two-pass statistics accumulated in float64, packed as (count, sum, sum of squares) for one
        # all_reduce.
        if count > 0:
            local_mean = x.sum(dims, dtype=torch.float64) / count
            centred = x.to(stat_dtype) - _channel_view(local_mean.to(stat_dtype), x)
            local_m2 = centred.pow(2).sum(dims, dtype=torch.float64)
            del centred
        else:
            local_mean = x.new_zeros(channels, dtype=torch.float64)
            local_m2 = x.new_zeros(channels, dtype=torch.float64)
        stats = torch.cat([
            torch.tensor([float(count)], dtype=torch.float64),
            local_mean * count,
            local_m2 + count * local_mean * local_mean,
        ])
        dist.all_reduce(stats, op=dist.ReduceOp.SUM, group=group)
        total = stats[0].item()
        if total <= 1:
            raise ValueError(
                f"SyncBatchNorm: {int(total)} value(s) per channel across all processes (input of shape "
                f"{tuple(x.shape)} here); batch statistics need more than one"
            )
        mean64 = stats[1:1 + channels] / total
        var64 = (stats[1 + channels:] / total - mean64 * mean64).clamp_min(0)
        if running_mean is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(mean64.to(running_mean.dtype), alpha=momentum)
                unbiased = var64 * (total / (total - 1))
                running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        mean = mean64.to(stat_dtype)
        invstd = torch.rsqrt(var64 + eps).to(stat_dtype)
        scale = invstd if weight is None else invstd * weight.to(stat_dtype)
        shift = -mean * scale if bias is None else bias.to(stat_dtype) - mean * scale
        out = (x * _channel_view(scale, x) + _channel_view(shift, x)).to(x.dtype)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.total = total
        ctx.group = group
        ctx.param_dtypes = (None if weight is None else weight.dtype, None if bias is None else bias.dtype)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mean, invstd = ctx.saved_tensors
        dims = _reduce_dims(x)
        stat_dtype = mean.dtype
        dy = grad_out.to(stat_dtype)
        xmu = x.to(stat_dtype) - _channel_view(mean, x)
        sum_dy = dy.sum(dims, dtype=torch.float64)
        sum_dy_xmu = (dy * xmu).sum(dims, dtype=torch.float64)
        weight_dtype, bias_dtype = ctx.param_dtypes
        grad_weight = (sum_dy_xmu * invstd).to(weight_dtype) if ctx.needs_input_grad[1] else None
        grad_bias = sum_dy.to(bias_dtype) if ctx.needs_input_grad[2] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            sums = torch.cat([sum_dy, sum_dy_xmu])
            dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=ctx.group)
            channels = x.shape[1]
            mean_dy = (sums[:channels] / ctx.total).to(stat_dtype)
            mean_dy_xmu = (sums[channels:] / ctx.total).to(stat_dtype)
            scale = invstd if weight is None else invstd * weight.to(stat_dtype)
            grad_x = (dy - _channel_view(mean_dy, x) - xmu * _channel_view(invstd * invstd * mean_dy_xmu, x))
            grad_x = (grad_x * _channel_view(scale, x)).to(x.dtype)
        return grad_x, grad_weight, grad_bias, None, None, None, None, None


def sync_batch_norm(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    eps: float = 1e-5,
    momentum: float = 0.1,
    group=None,
) -> Tensor:
    """Training-mode batch norm of x (B, C, *) with the statistics of the batch of every process in `group`
    (default: the world), on any device torch.distributed's backend can reduce (gloo: CPU).

    weight, bias: (C,) or None. running_mean, running_var: (C,) buffers updated in place (momentum is the weight
    of the new value), or None. Every process of the group must call it, in the same order, forward and backward.
    Returns a tensor of x's shape and dtype."""
    if x.dim() < 2:
        raise ValueError(f"sync_batch_norm expects x of shape (B, C, *), got {tuple(x.shape)}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must both be tensors or both be None")
    return _SyncBatchNormFunction.apply(x, weight, bias, running_mean, running_var, eps, momentum, group)


class SyncBatchNorm(nn.SyncBatchNorm):
    """nn.SyncBatchNorm that synchronises CPU tensors too: its arguments, parameters, buffers and behaviour.

    CUDA (and HPU/XPU) tensors take torch's implementation; CPU tensors in training mode, with torch.distributed
    initialised, take `sync_batch_norm` (a plain BatchNorm when the group has one process).

    A CPU module holding it must be wrapped in resnest_fast.nn.DistributedDataParallel: torch's refuses any
    nn.SyncBatchNorm in a CPU module ("SyncBatchNorm layers only work with GPU modules")."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None, device=None, dtype=None, **kwargs):
        # kwargs: what the BatchNorm of this torch adds (torch 2.13: bias=)
        super().__init__(num_features, eps, momentum, affine, track_running_stats, process_group, device=device,
                         dtype=dtype, **kwargs)

    def _group(self):
        return self.process_group if self.process_group is not None else dist.group.WORLD

    def forward(self, input: Tensor) -> Tensor:
        if input.device.type in _TORCH_SYNC_DEVICES:
            return super().forward(input)
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        # buffers are updated in training mode only, and used for normalising in eval mode
        running_mean = self.running_mean if not self.training or self.track_running_stats else None
        running_var = self.running_var if not self.training or self.track_running_stats else None
        if not (self.training and distributed_world_size(self.process_group) > 1):
            return F.batch_norm(input, running_mean, running_var, self.weight, self.bias, batch_stats, factor,
                                self.eps)
        return sync_batch_norm(input, self.weight, self.bias, running_mean, running_var, self.eps, factor,
                               self._group())


# torch 2.13 renamed DistributedDataParallel's broadcast_buffers to forward_sync_buffers (the old name warns there)
TORCH_DDP_HAS_FORWARD_SYNC_BUFFERS = (
    "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters)


class DistributedDataParallel(nn.parallel.DistributedDataParallel):
    """torch's DistributedDataParallel that also accepts resnest_fast.nn.SyncBatchNorm layers in a CPU module.

    torch refuses every nn.SyncBatchNorm in a CPU module because its own cannot reduce CPU tensors; ours can (gloo),
    so only modules holding torch's own are refused, with torch's error. Everything else is torch's class.

    `forward_sync_buffers` (torch 2.13's name) is accepted on every torch: before 2.13 it is passed on as
    `broadcast_buffers`, which with False also leaves buffers out of the sync at construction; a model built the
    same way on every rank (the training command's) has equal buffers there either way."""

    def __init__(self, module: nn.Module, *args, **kwargs):
        if not TORCH_DDP_HAS_FORWARD_SYNC_BUFFERS and "forward_sync_buffers" in kwargs:
            kwargs["broadcast_buffers"] = kwargs.pop("forward_sync_buffers")
        super().__init__(module, *args, **kwargs)

    def _passing_sync_batchnorm_handle(self, module: nn.Module) -> None:
        if self.device_type != "cpu" or any(
            isinstance(m, nn.SyncBatchNorm) and not isinstance(m, SyncBatchNorm) for m in module.modules()
        ):
            super()._passing_sync_batchnorm_handle(module)
