"""conv(relu(bn(x))) in training without keeping relu(bn(x)) for backward.

Eager autograd keeps both the BN's input x (for BN's backward) and the ReLU output a (for the conv's weight
gradient): two tensors of x's size. Here only x is kept, with BN's per-channel batch mean and inverse std; backward
recomputes a = relu((x - mean) * invstd * weight + bias) (one elementwise pass) and then runs ATen's own
convolution and batch-norm backward kernels, so the gradients are those of the eager graph. In a ResNeSt
bottleneck this drops one (B, width, H, W) tensor per block from what training keeps (bn1 -> relu -> the split
attention's conv), and two in the deep stem.

BatchNorm semantics are nn.BatchNorm2d's in training (batch statistics; running statistics and
num_batches_tracked updated once per forward, momentum=None as a cumulative average). Under autocast the conv
runs in the autocast dtype, as it would in eager mode, and its weight gradient comes back in the weight's dtype.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from resnest_fast.nn.sync_batchnorm import SyncBatchNorm
from resnest_fast.utils import distributed_world_size

__all__ = ["bn_relu_conv", "lean_bn_relu_conv_applies"]


def _computes_batch_norm(bn: nn.Module) -> bool:
    """bn's forward is BatchNorm's (a subclass that keeps it, e.g. mmengine's _BatchNormXd, which its Runner puts in
    place of SyncBN on one process), or a SyncBatchNorm's (mmcv's SyncBN subclasses torch's) on one process."""
    forward = type(bn).forward
    if forward is _BatchNorm.forward:
        return isinstance(bn, _BatchNorm)
    return forward in (nn.SyncBatchNorm.forward, SyncBatchNorm.forward) and \
        distributed_world_size(bn.process_group) == 1


def lean_bn_relu_conv_applies(x: Tensor, bn: nn.Module, conv: nn.Module) -> bool:
    """The lean path runs for a BatchNorm (or a SyncBatchNorm on one process) in training mode with batch
    statistics, a plain Conv2d with zero padding, a gradient wanted, in eager mode; everything else (eval-mode BN,
    SyncBN across processes, a subclass with its own forward, torch.compile tracing, no grad) takes the modules."""
    return (
        torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and _computes_batch_norm(bn)
        and bn.training
        and bn.affine
        and type(conv) is nn.Conv2d
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and (x.requires_grad or any(p.requires_grad for p in (bn.weight, bn.bias, conv.weight)))
    )


class _BNReLUConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bn_weight, bn_bias, conv_weight, conv_bias, bn, conv):
        factor = 0.0
        running_mean, running_var = bn.running_mean, bn.running_var
        if bn.track_running_stats:
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        # native_batch_norm updates the running statistics as nn.BatchNorm2d does (unbiased variance)
        a, mean, invstd = torch.ops.aten.native_batch_norm(x, bn_weight, bn_bias, running_mean, running_var, True,
                                                           factor, bn.eps)
        a = torch.relu_(a)
        device = x.device.type
        autocast = torch.is_autocast_enabled(device)
        y = F.conv2d(a, conv_weight, conv_bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        ctx.save_for_backward(x, bn_weight, bn_bias, conv_weight, mean, invstd)
        ctx.conv = (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
        ctx.has_conv_bias = conv_bias is not None
        ctx.eps = bn.eps
        ctx.conv_dtype = y.dtype if autocast else None
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, bn_weight, bn_bias, conv_weight, mean, invstd = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        shape = (1, -1, 1, 1)
        scale = (invstd * bn_weight.to(invstd.dtype)).view(shape)
        shift = bn_bias.to(invstd.dtype).view(shape) - mean.view(shape) * scale
        a = torch.relu_((x * scale + shift).to(x.dtype))  # the forward's activation, recomputed
        w = conv_weight
        if ctx.conv_dtype is not None:  # autocast: the conv ran in its dtype
            a_conv, w = a.to(ctx.conv_dtype), conv_weight.to(ctx.conv_dtype)
        else:
            a_conv = a
        grad_a, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad_y.to(a_conv.dtype), a_conv, w, [w.shape[0]] if ctx.has_conv_bias else None, stride, padding,
            dilation, False, [0, 0], groups, [True, ctx.needs_input_grad[3], ctx.has_conv_bias])
        grad_a = grad_a.to(x.dtype).masked_fill_(a <= 0, 0)
        del a, a_conv
        grad_x, grad_bw, grad_bb = torch.ops.aten.native_batch_norm_backward(
            grad_a, x, bn_weight, None, None, mean, invstd, True, ctx.eps,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]])
        if grad_w is not None:
            grad_w = grad_w.to(conv_weight.dtype)
        if grad_b is not None:
            grad_b = grad_b.to(conv_weight.dtype)
        return grad_x, grad_bw, grad_bb, grad_w, grad_b, None, None


def bn_relu_conv(x: Tensor, bn: _BatchNorm, conv: nn.Conv2d, lean: Optional[bool] = None) -> Tensor:
    """conv(relu(bn(x))) for x (B, C, H, W): the lean autograd Function where it applies (see
    lean_bn_relu_conv_applies), else the modules themselves. `lean` forces one or the other (tests)."""
    if lean is None:
        lean = lean_bn_relu_conv_applies(x, bn, conv)
    if not lean:
        return conv(F.relu(bn(x)))
    return _BNReLUConv.apply(x, bn.weight, bn.bias, conv.weight, conv.bias, bn, conv)
