"""SplitAttentionConv2d: mmseg's split-attention conv with the post-conv part fused.

mmseg computes conv -> bn0 -> relu -> view/sum -> adaptive_avg_pool -> fc1 -> bn1 -> relu -> fc2 -> rSoftMax ->
mul -> sum, making about 9.5 passes over the (B, radix*C, H, W) conv output and keeping both the conv output and
its activation for backward. Here the conv stays in ATen (cuDNN / oneDNN), bn0 becomes a per-channel
(scale, shift) — folded from the running statistics in eval, from the batch statistics in training — and the two
fused ops apply relu(x*scale + shift) on the fly: `splat_pool` reads x once to produce the (B, C) context,
the tiny attention MLP runs in PyTorch, and `splat_combine` reads x once more to write the output. Backward
recomputes the activation from x, so only the conv input and output are kept.

Constructor arguments, submodule names (conv, bn0, fc1, bn1, fc2) and buffers are mmseg's, so an mmseg
state_dict loads with strict=True.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnest_fast.backend import normalize_backend, training_backend
from resnest_fast.nn.norm import build_norm, check_conv_cfg
from resnest_fast.op_rules import MAX_RADIX, accumulation_dtype
from resnest_fast.ops import (
    attention_weights_reference,
    splat_backward_input,
    splat_backward_reduce,
    splat_bn_stats,
    splat_combine,
    splat_pool,
)
from resnest_fast.utils import check_input_dtype, distributed_world_size, int_pair

__all__ = ["SplitAttentionConv2d", "RSoftmax"]


class RSoftmax(nn.Module):
    """mmseg's radix softmax (softmax over the radix splits of [groups][radix][C/groups] logits, sigmoid when
    radix == 1). The fused path computes it inside `splat_combine` and never calls this module: it stays as
    `SplitAttentionConv2d.rsoftmax` so that named_modules() pairs one-to-one with mmseg's (tests/models compares
    the two trees module by module); it has no parameters, so state_dicts do not see it."""

    def __init__(self, radix: int, groups: int):
        super().__init__()
        self.radix = radix
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        return attention_weights_reference(x.flatten(1), self.radix, self.groups).reshape(x.shape[0], -1)

    def extra_repr(self) -> str:
        return f"radix={self.radix}, groups={self.groups}"


class SplitAttentionConv2d(nn.Module):
    """Split-attention conv of ResNeSt (mmseg's arguments and parameter names), post-conv part fused.

    Args:
        in_channels, channels: input and output channels (the conv produces radix*channels).
        kernel_size, stride, padding, dilation: as nn.Conv2d.
        groups: cardinality; the conv has groups*radix groups.
        radix: number of splits (1: sigmoid attention).
        reduction_factor: inter_channels = max(in_channels*radix // reduction_factor, 32).
        inter_channels: the attention MLP's width, overriding that rule (timm's rd_channels-style modules).
        conv_cfg: None or dict(type='Conv2d'); norm_cfg: dict(type='BN' | 'SyncBN', ...).
        dcn: must be None (deformable convs are not part of the ResNeSt configs this project serves).
        backend: None (the default backend), "auto", "cpu", "cuda", "triton" or "reference".
    Shapes: (B, in_channels, H, W) -> (B, channels, H', W'); channels_last input gives channels_last output.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        radix: int = 2,
        reduction_factor: int = 4,
        conv_cfg: Optional[dict] = None,
        norm_cfg: Optional[dict] = None,
        dcn: Optional[dict] = None,
        backend: Optional[str] = None,
        inter_channels: Optional[int] = None,
    ):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("channels", channels), ("groups", groups),
                        ("radix", radix), ("reduction_factor", reduction_factor)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if radix > MAX_RADIX:
            raise ValueError(f"radix must be at most {MAX_RADIX}, got {radix}")
        if dcn is not None:
            raise NotImplementedError(
                "dcn is not supported by resnest_fast.nn.SplitAttentionConv2d (the ResNeSt configs use dcn=None)"
            )
        check_conv_cfg(conv_cfg)
        if in_channels % (groups * radix):
            raise ValueError(
                f"in_channels ({in_channels}) must be divisible by groups*radix ({groups * radix}) for the conv"
            )
        if channels % groups:
            raise ValueError(f"channels ({channels}) must be divisible by groups ({groups})")
        norm_cfg = dict(type="BN") if norm_cfg is None else norm_cfg
        if inter_channels is None:
            inter_channels = max(in_channels * radix // reduction_factor, 32)
        elif not isinstance(inter_channels, int) or inter_channels < 1:
            raise ValueError(f"inter_channels must be a positive int or None, got {inter_channels!r}")
        if inter_channels % groups:
            raise ValueError(f"inter_channels ({inter_channels}) must be divisible by groups ({groups})")
        self.radix = radix
        self.groups = groups
        self.channels = channels
        self.with_dcn = False
        self.backend = normalize_backend(backend, "backend")
        self.conv = nn.Conv2d(
            in_channels,
            channels * radix,
            int_pair(kernel_size, "kernel_size", minimum=1),
            stride=int_pair(stride, "stride", minimum=1),
            padding=int_pair(padding, "padding", minimum=0),
            dilation=int_pair(dilation, "dilation", minimum=1),
            groups=groups * radix,
            bias=False,
        )
        self.norm0_name, self.norm1_name = "bn0", "bn1"
        self.bn0 = build_norm(norm_cfg, channels * radix)
        self.relu = nn.ReLU(inplace=True)
        self.fc1 = nn.Conv2d(channels, inter_channels, 1, groups=groups)
        self.bn1 = build_norm(norm_cfg, inter_channels)
        self.fc2 = nn.Conv2d(inter_channels, channels * radix, 1, groups=groups)
        self.rsoftmax = RSoftmax(radix, groups)  # never called: mmseg's module tree, see RSoftmax

    @property
    def norm0(self) -> nn.Module:
        return self.bn0

    @property
    def norm1(self) -> nn.Module:
        return self.bn1

    def extra_repr(self) -> str:
        return f"radix={self.radix}, groups={self.groups}, backend={self.backend or 'default'}"

    def bn0_scale_shift(self, y: Tensor, update_running_stats: bool = True):
        """bn0 as a per-channel (scale, shift) so that bn0(y) == y*scale + shift, updating running statistics
        exactly as nn.BatchNorm2d does in training. Returns (scale, shift, (var, mean) or None if running
        statistics were used). bn0's own training flag decides, as it does for mmseg's bn0: a backbone's
        norm_eval=True (or a norm frozen by hand) keeps the running statistics in a module that trains."""
        bn = self.bn0
        use_batch_stats = bn.training or bn.running_mean is None
        if use_batch_stats:
            n = y.numel() // y.shape[1]
            if n <= 1:
                raise ValueError(
                    f"SplitAttentionConv2d: bn0 cannot compute batch statistics from one value per channel "
                    f"(input of shape {tuple(y.shape)}); use a larger batch or spatial size, or eval mode"
                )
            var, mean = _BatchVarMean.apply(y, self.backend)
            invstd = torch.rsqrt(var + bn.eps)
            if bn.training and bn.track_running_stats and update_running_stats:
                bn.num_batches_tracked.add_(1)
                factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
                with torch.no_grad():
                    bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
                    bn.running_var.lerp_((var * (n / (n - 1))).to(bn.running_var.dtype), factor)
        else:
            var, mean = bn.running_var, bn.running_mean
            # fold in float32 for half/bfloat16 statistics, as BatchNorm computes internally: a scale/shift
            # rounded to half/bfloat16 moves every pre-activation by ~0.4 % of the shift, which flips ReLU masks
            # (and their gradients) that mmseg's bn0 -> relu keeps
            acc = accumulation_dtype(var.dtype)
            var, mean = var.to(acc), mean.to(acc)
            invstd = torch.rsqrt(var + bn.eps)
        if bn.affine:
            scale = bn.weight * invstd
            shift = bn.bias - mean * scale
        else:
            scale, shift = invstd, -mean * invstd
        return scale, shift, ((var, mean) if use_batch_stats else None)

    def _attention_logits(self, gap: Tensor, recompute: bool = False) -> Tensor:
        """fc1 -> bn1 -> relu -> fc2 on the (B, C) context; `recompute` re-runs it for backward without
        updating bn1's running statistics a second time."""
        h = _grouped_linear(gap, self.fc1)[:, :, None, None]
        bn = self.bn1
        if recompute:
            batch_stats = bn.training or bn.running_mean is None
            h = F.batch_norm(h, None if batch_stats else bn.running_mean, None if batch_stats else bn.running_var,
                             bn.weight, bn.bias, batch_stats, 0.0, bn.eps)
        else:
            h = bn(h)
        return _grouped_linear(F.relu(h).flatten(1), self.fc2)

    def _fused_params(self):
        return (self.bn0.weight, self.bn0.bias, self.fc1.weight, self.fc1.bias, self.bn1.weight, self.bn1.bias,
                self.fc2.weight, self.fc2.bias)

    def _fused_backward_backend(self, y: Tensor) -> Optional[str]:
        """The backend whose training kernels (C++ or Triton) run the two-pass backward, or None where it does not
        apply. It runs in eager mode when a gradient is needed; torch.compile and torch.export trace the op-level
        path instead (its autograd is registered per op). torch.jit.trace must not see the autograd.Function either:
        it cannot record a Python function that takes a module (it fails with an opaque `unordered_map::at`),
        whereas the ops themselves are TorchScript-visible."""
        if not torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.jit.is_tracing():
            return None
        if not self.bn0.affine:
            return None
        if not (y.requires_grad or any(p.requires_grad for p in self._fused_params())):
            return None
        return training_backend(self.backend, y.device)

    def _syncbn_across_processes(self) -> bool:
        return (
            isinstance(self.bn0, nn.SyncBatchNorm)  # ours is one too
            and self.bn0.training
            and distributed_world_size(self.bn0.process_group) > 1
        )

    def __prepare_scriptable__(self):
        # torch.jit.script calls this on every submodule before compiling anything, so the user gets this message
        # instead of a TorchScript compiler error deep inside the attention code.
        raise RuntimeError(
            "SplitAttentionConv2d cannot be compiled by torch.jit.script (its Python-level backend choice and fused "
            "training backward are not TorchScript). For deployment use resnest_fast.export.export_program(model, "
            "img) (torch.export, the fused ops kept), resnest_fast.export.export_onnx(...), or TorchScript through "
            "tracing: resnest_fast.export.trace_torchscript(model, img) (torch.jit.trace in eval mode)."
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"SplitAttentionConv2d expects x of shape (B, C, H, W), got {tuple(x.shape)}")
        check_input_dtype("SplitAttentionConv2d", x, getattr(self.conv, "weight", None))
        return self.attend(self.conv(x))

    def attend(self, y: Tensor) -> Tensor:
        """Everything after the conv: y (B, radix*C, H, W) -> (B, C, H, W). The benchmarks time this part."""
        syncing = self._syncbn_across_processes()
        if y.shape[0] == 1 and self.bn1.training and not syncing:
            raise ValueError(
                "SplitAttentionConv2d: batch size 1 in training mode: bn1 normalises the (B, inter_channels) "
                "attention vector over the batch and cannot do so with one sample. Train with batch >= 2, or put "
                "the norm layers in eval mode (e.g. the backbone's norm_eval=True, or module.eval())."
            )
        if syncing:
            # Statistics must be reduced across processes: let SyncBatchNorm do it, then fuse the rest.
            y = F.relu(self.bn0(y))
            scale = shift = None
            relu = False
        else:
            fused = self._fused_backward_backend(y)
            if fused is not None:
                return _FusedSplitAttention.apply(y, self, fused, *self._fused_params())
            scale, shift, _ = self.bn0_scale_shift(y)
            relu = True
        gap = splat_pool(y, scale, shift, radix=self.radix, relu=relu, backend=self.backend)
        logits = self._attention_logits(gap).to(y.dtype)
        return splat_combine(
            y, logits, scale, shift, radix=self.radix, groups=self.groups, relu=relu, backend=self.backend
        )


def _grouped_linear(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """conv(x[:, :, None, None]).flatten(1) for a 1x1 conv on a (B, C) input, as a (batched) matmul: the same
    maths as mmseg's fc1/fc2, without oneDNN's per-call overhead, which dominates on these small (B, C) tensors."""
    w = conv.weight.flatten(1)  # (out, in / groups)
    groups = conv.groups
    if groups == 1:
        return F.linear(x, w, conv.bias)
    b = x.shape[0]
    xg = x.reshape(b, groups, -1).transpose(0, 1)  # (G, B, in/G)
    wg = w.reshape(groups, -1, w.shape[1])  # (G, out/G, in/G)
    out = torch.bmm(xg, wg.transpose(1, 2)).transpose(0, 1).reshape(b, -1)
    return out if conv.bias is None else out + conv.bias


class _FusedSplitAttention(torch.autograd.Function):
    """Everything after the conv, with a backward of two passes over y (CPU, CUDA or Triton kernels:
    splat_backward_reduce, then splat_backward_input) that writes y's gradient once — contributions of combine, pool
    and bn0's batch statistics together. The small tensors in between (attention MLP, bn0's scale/shift) go through
    autograd on recomputed copies. Saves y and (B, C)-sized tensors only."""

    @staticmethod
    def forward(ctx, y, module, backend, *params):  # backend: SplitAttentionConv2d._fused_backward_backend's
        scale, shift, stats = module.bn0_scale_shift(y)  # no grad here: updates bn0's running statistics
        gap = splat_pool(y, scale, shift, radix=module.radix, relu=True, backend=backend)
        logits = module._attention_logits(gap).to(y.dtype)
        out = splat_combine(y, logits, scale, shift, radix=module.radix, groups=module.groups, relu=True,
                            backend=backend)
        # the MLP is recomputed in backward: under the same autocast state (what torch.amp.custom_bwd does, for
        # whichever device y is on)
        device = y.device.type
        ctx.autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        var, mean = stats if stats is not None else (module.bn0.running_var, module.bn0.running_mean)
        ctx.module = module
        ctx.backend = backend
        ctx.batch_stats = stats is not None
        ctx.save_for_backward(y, gap, logits, scale, shift, var, mean)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_grad_enabled():  # create_graph=True: a backward that autograd can differentiate again
            return _FusedSplitAttention._differentiable_backward(ctx, grad_out)
        return _FusedSplitAttention._fused_backward(ctx, grad_out)

    @staticmethod
    def _differentiable_backward(ctx, grad_out):
        """The gradients by autograd through the op-level forward (each op's backward differentiable again, bn0's
        batch statistics too), recomputed without touching the running statistics: the two-pass backward kernels
        have no autograd, so a second derivative through them would silently come out as zero."""
        y = ctx.saved_tensors[0]
        m = ctx.module
        params = list(m._fused_params())
        enabled, dtype = ctx.autocast
        with torch.autocast(y.device.type, dtype=dtype, enabled=enabled):
            scale, shift, _ = m.bn0_scale_shift(y, update_running_stats=False)
            gap = splat_pool(y, scale, shift, radix=m.radix, relu=True, backend=ctx.backend)
            logits = m._attention_logits(gap, recompute=True).to(y.dtype)
            out = splat_combine(y, logits, scale, shift, radix=m.radix, groups=m.groups, relu=True,
                                backend=ctx.backend)
        inputs = [y] + params
        wanted = [t for t in inputs if t.requires_grad]
        found = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True, allow_unused=True))
        grads = [next(found) if t.requires_grad else None for t in inputs]
        return (grads[0], None, None, *grads[1:])

    @staticmethod
    def _fused_backward(ctx, grad_out):
        y, gap, logits, scale, shift, var, mean = ctx.saved_tensors
        m = ctx.module
        radix, groups = m.radix, m.groups
        backend = ctx.backend
        dlogits, dscale, dshift, mx, mk = splat_backward_reduce(grad_out, y, logits, scale, shift, radix, groups,
                                                                backend=backend)
        params = list(ctx.module._fused_params())
        mlp_params = params[2:]
        enabled, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(y.device.type, dtype=dtype, enabled=enabled):
            gap_d = gap.detach().requires_grad_(True)
            recomputed = m._attention_logits(gap_d, recompute=True).to(y.dtype)
            wanted = [gap_d] + [p for p in mlp_params if p.requires_grad]
            grads = torch.autograd.grad(recomputed, wanted, dlogits)
        grad_gap = grads[0]
        mlp_grads = iter(grads[1:])
        mlp_grads = [next(mlp_grads) if p.requires_grad else None for p in mlp_params]
        # the pool's part of the scale/shift gradients: d gap[b,c] / d scale[r*C+c] = sum_p act'*y / P
        gg = (grad_gap.to(mx.dtype) / (y.shape[2] * y.shape[3])).repeat(1, radix)
        dscale = dscale + (gg * mx).sum(0).to(dscale.dtype)
        dshift = dshift + (gg * mk).sum(0).to(dshift.dtype)
        bn = m.bn0
        with torch.enable_grad():
            w = bn.weight.detach().requires_grad_(True)
            b = bn.bias.detach().requires_grad_(True)
            v = var.detach().requires_grad_(ctx.batch_stats)
            mu = mean.detach().requires_grad_(ctx.batch_stats)
            sc = w * torch.rsqrt(v + bn.eps)
            sh = b - mu * sc
            inputs = [w, b] + ([v, mu] if ctx.batch_stats else [])
            bn_grads = torch.autograd.grad((sc, sh), inputs, (dscale, dshift))
        if ctx.batch_stats:
            n = y.numel() // y.shape[1]
            coef_a = (2.0 / n) * bn_grads[2]  # d var / d y = 2 (y - mean) / n ; d mean / d y = 1 / n
            coef_b = bn_grads[3] / n - coef_a * mean
        else:
            coef_a = torch.zeros_like(scale)
            coef_b = torch.zeros_like(scale)
        grad_y = None
        if ctx.needs_input_grad[0]:
            grad_y = splat_backward_input(grad_out, grad_gap.to(y.dtype), y, logits, scale, shift,
                                          coef_a.to(scale.dtype), coef_b.to(scale.dtype), radix, groups,
                                          backend=backend)
        dw = bn_grads[0] if bn.weight.requires_grad else None
        db = bn_grads[1] if bn.bias.requires_grad else None
        return (grad_y, None, None, dw, db, *mlp_grads)


class _BatchVarMean(torch.autograd.Function):
    """Per-channel biased variance and mean of y (B, K, H, W) over (B, H, W), accumulated in float32.

    Saves only y (which the fused ops keep anyway) and the small mean; plain autograd would keep an upcast copy
    of y for half/bfloat16 inputs."""

    @staticmethod
    def forward(ctx, y, backend):
        with torch.no_grad():
            var, mean = splat_bn_stats(y, backend=backend)
        ctx.save_for_backward(y, mean)
        return var, mean

    @staticmethod
    def backward(ctx, dvar, dmean):
        y, mean = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the mean saved above carries no gradient of its own
            var64, mean64 = torch.var_mean(y.to(accumulation_dtype(y.dtype)), dim=(0, 2, 3), unbiased=False)
            return torch.autograd.grad((var64, mean64), y, (dvar, dmean), create_graph=True)[0], None
        n = y.numel() // y.shape[1]
        # d var / d y = 2 (y - mean) / n ; d mean / d y = 1 / n
        a = (2.0 / n) * dvar
        b = dmean / n - a * mean
        return y * a[:, None, None].to(y.dtype) + b[:, None, None].to(y.dtype), None
