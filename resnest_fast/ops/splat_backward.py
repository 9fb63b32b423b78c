"""The two passes of SplitAttentionConv2d's fused backward (training, bn0 + ReLU always on).

Op-level autograd computes the gradient of x three times (combine, pool, bn0's statistics), each a fresh
full-size tensor, then adds them. The module's backward instead makes two passes over x:
    splat_backward_reduce(grad_out, x, logits, scale, shift) -> grad_logits (B, R*C), the combine's grad_scale
        and grad_shift (R*C,), and per (sample, split channel) mx = sum_p act'(pre)*x and m = sum_p act'(pre)
        (B, R*C) in accumulation_dtype(x.dtype), from which the pool's scale/shift gradients follow once grad_gap
        is known;
    splat_backward_input(grad_out, grad_gap, x, logits, scale, shift, coef_a, coef_b) -> grad_x =
        scale*act'(pre)*(grad_out*a + grad_gap/(H*W)) + coef_a*x + coef_b, where coef_a, coef_b carry the
        gradient of the batch statistics (zero in eval).
with pre = x*scale + shift, act = relu, a the attention weights of the logits (splat_combine's layout).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from resnest_fast.backend import training_op
from resnest_fast.op_rules import accumulation_dtype, check_common, check_logits
from resnest_fast.ops.splat_combine import attention_weights_reference, splat_combine_reference

__all__ = ["splat_backward_reduce", "splat_backward_input", "splat_backward_reduce_reference",
           "splat_backward_input_reference"]


def _mask_and_acc(x, scale, shift):
    """Where act'(pre) is 1, as a bool tensor: torch's threshold_backward (NaN passes)."""
    acc = accumulation_dtype(x.dtype)
    pre = x.to(acc) * scale.to(acc)[:, None, None] + shift.to(acc)[:, None, None]
    return ~(pre <= 0), acc


def splat_backward_reduce_reference(grad_out, x, logits, scale, shift, radix: int, groups: int):
    with torch.enable_grad():
        lg = logits.detach().requires_grad_(True)
        sc = scale.detach().requires_grad_(True)
        sh = shift.detach().requires_grad_(True)
        out = splat_combine_reference(x.detach(), lg, sc, sh, radix, groups, True)
        dlogits, dscale, dshift = torch.autograd.grad(out, (lg, sc, sh), grad_out)
    mask, acc = _mask_and_acc(x, scale, shift)
    mk = mask.to(acc)
    mx = (mk * x.to(acc)).sum((2, 3))
    return dlogits, dscale, dshift, mx, mk.sum((2, 3))


def splat_backward_input_reference(grad_out, grad_gap, x, logits, scale, shift, coef_a, coef_b, radix: int,
                                   groups: int) -> Tensor:
    b, rc, h, w = x.shape
    mask, acc = _mask_and_acc(x, scale, shift)
    att = attention_weights_reference(logits.to(acc), radix, groups).reshape(b, rc)
    g = grad_out.to(acc).repeat(1, radix, 1, 1) * att[:, :, None, None]
    gg = (grad_gap.to(acc) / (h * w)).repeat(1, radix)[:, :, None, None]
    # the mask selects, as relu's backward does: an inf or NaN gradient where act' = 0 gives 0, not 0 * inf = NaN
    dx = scale.to(acc)[:, None, None] * torch.where(mask, g + gg, 0) + coef_a.to(acc)[:, None, None] * x.to(acc) \
        + coef_b.to(acc)[:, None, None]
    return dx.to(x.dtype)



def splat_backward_reduce(grad_out: Tensor, x: Tensor, logits: Tensor, scale: Tensor, shift: Tensor, radix: int,
                          groups: int, backend: Optional[str] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Pass 1 of the fused backward: one read of x and grad_out, no grad_x.

    Args:
        grad_out: (B, C, H, W), x's dtype: the gradient of splat_combine's output.
        x: (B, R*C, H, W), the grouped conv's output, NCHW or channels_last.
        logits: (B, R*C), x's dtype, [groups][radix][C/groups] (splat_combine's layout).
        scale, shift: (R*C,), bn0 as an affine (x's dtype or float32); ReLU is always on.
        radix, groups: the split attention's radix R and cardinality.
        backend: None (the default backend), "auto", "cpu", "cuda", "triton" or "reference"; a C++ backend
            built without the training kernels uses the reference.
    Returns (grad_logits (B, R*C) in logits' dtype, grad_scale and grad_shift (R*C,) of combine alone in scale's
    dtype, mx (B, R*C) = sum over positions of act'(pre)*x, m (B, R*C) = sum over positions of act'(pre)), mx and m
    in accumulation_dtype(x.dtype). Not differentiable.
    """
    check_common(x, scale, shift, radix)
    check_logits(x, logits, radix, groups)
    op = training_op("splat_backward_reduce", backend, x.device)
    if op is not None:
        return op(grad_out, x, logits, scale, shift, radix, groups)
    return splat_backward_reduce_reference(grad_out, x, logits, scale, shift, radix, groups)


def splat_backward_input(grad_out: Tensor, grad_gap: Tensor, x: Tensor, logits: Tensor, scale: Tensor, shift: Tensor,
                         coef_a: Tensor, coef_b: Tensor, radix: int, groups: int,
                         backend: Optional[str] = None) -> Tensor:
    """Pass 2 of the fused backward: grad_x (B, R*C, H, W) in x's dtype, written once (the kernels write it in
    kernel_layout(x)).

        grad_x = scale*act'(pre)*(grad_out*a + grad_gap/(H*W)) + coef_a*x + coef_b

    grad_out (B, C, H, W) and grad_gap (B, C) in x's dtype; x, logits, scale, shift, radix, groups and backend as in
    splat_backward_reduce; coef_a, coef_b (R*C,) in scale's dtype carry the gradient of bn0's batch statistics (zero
    with running statistics). Not differentiable.
    """
    check_common(x, scale, shift, radix)
    check_logits(x, logits, radix, groups)
    op = training_op("splat_backward_input", backend, x.device)
    if op is not None:
        return op(grad_out, grad_gap, x, logits, scale, shift, coef_a, coef_b, radix, groups)
    return splat_backward_input_reference(grad_out, grad_gap, x, logits, scale, shift, coef_a, coef_b, radix, groups)
