"""The two passes of SplitAttentionConv2d's fused backward (training, bn0 + ReLU always on).

Op-level autograd computes the gradient of x three times (combine, pool, bn0's statistics), each a fresh
full-size tensor, then adds them. The module's backward instead makes two passes over x:
    splat_backward_reduce(grad_out, x, logits, scale, shift) -> grad_logits (B, R*C), the combine's grad_scale
        and grad_shift (R*C,), and per (sample, split channel) mx = sum_p act'(pre)*x and m = sum_p act'(pre)
        (B, R*C) in float32 — from which the pool's scale/shift gradients follow once grad_gap is known;
    splat_backward_input(grad_out, grad_gap, x, logits, scale, shift, coef_a, coef_b) -> grad_x =
        scale*act'(pre)*(grad_out*a + grad_gap/(H*W)) + coef_a*x + coef_b, where coef_a, coef_b carry the
        gradient of the batch statistics (zero in eval).
with pre = x*scale + shift, act = relu, a the attention weights of the logits (splat_combine's layout).
"""
import torch
from torch import Tensor

from resnest_fast.ops.splat_combine import attention_weights_reference, splat_combine_reference

__all__ = ["splat_backward_reduce_reference", "splat_backward_input_reference"]


def _mask_and_acc(x, scale, shift):
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    pre = x.to(acc) * scale.to(acc)[:, None, None] + shift.to(acc)[:, None, None]
    return (~(pre <= 0)).to(acc), acc  # torch's threshold_backward: NaN passes


def splat_backward_reduce_reference(grad_out, x, logits, scale, shift, radix: int, groups: int):
    with torch.enable_grad():
        lg = logits.detach().requires_grad_(True)
        sc = scale.detach().requires_grad_(True)
        sh = shift.detach().requires_grad_(True)
        out = splat_combine_reference(x.detach(), lg, sc, sh, radix, groups, True)
        dlogits, dscale, dshift = torch.autograd.grad(out, (lg, sc, sh), grad_out)
    mask, acc = _mask_and_acc(x, scale, shift)
    mx = (mask * x.to(acc)).sum((2, 3))
    return dlogits, dscale, dshift, mx, mask.sum((2, 3))


def splat_backward_input_reference(grad_out, grad_gap, x, logits, scale, shift, coef_a, coef_b, radix: int,
                                   groups: int) -> Tensor:
    b, rc, h, w = x.shape
    mask, acc = _mask_and_acc(x, scale, shift)
    att = attention_weights_reference(logits.to(acc), radix, groups).reshape(b, rc)
    g = grad_out.to(acc).repeat(1, radix, 1, 1) * att[:, :, None, None]
    gg = (grad_gap.to(acc) / (h * w)).repeat(1, radix)[:, :, None, None]
    dx = scale.to(acc)[:, None, None] * mask * (g + gg) + coef_a.to(acc)[:, None, None] * x.to(acc) \
        + coef_b.to(acc)[:, None, None]
    return dx.to(x.dtype)


def _register_fakes():
    from resnest_fast import _extension as ext

    if not ext.HAS_C:
        return

    @torch.library.register_fake("resnest_fast::splat_backward_reduce")
    def _reduce(grad_out, x, logits, scale, shift, radix, groups):
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        sums = x.new_empty((x.shape[0], x.shape[1]), dtype=acc)
        return logits.new_empty(logits.shape), scale.new_empty(scale.shape), shift.new_empty(shift.shape), sums, \
            sums.new_empty(sums.shape)

    @torch.library.register_fake("resnest_fast::splat_backward_input")
    def _input(grad_out, grad_gap, x, logits, scale, shift, coef_a, coef_b, radix, groups):
        from resnest_fast.ops._common import kernel_layout

        return torch.empty_like(x, memory_format=kernel_layout(x))


_register_fakes()
