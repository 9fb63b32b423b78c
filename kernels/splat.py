"""Triton kernels of the fused split-attention ops: splat_pool and splat_combine, forward and backward.

What is fused: the activation act(v) = relu(v*scale + shift) of the grouped conv's output x (B, R*C, H, W) is
never written to memory. splat_pool reduces it straight to the global context gap (B, C); splat_combine applies
the radix softmax of the logits and sums the weighted splits into out (B, C, H, W); the two backward kernels
recompute act and its derivative from x (the only activation saved), write grad_x, and reduce the gradients of
the attention weights, scale and shift in the same pass.

Why it is correct: the maths is the one of resnest_fast/ops/splat_pool.py and splat_combine.py (the pure-PyTorch
references, the oracle of tests/kernels/test_splat_triton.py) and of csrc/ops/splat_math.h (the C++ kernels):
  - split r of channel c is channel r*C + c of x; the logit of (r, c), c = g*(C/G) + i, sits at
    (g*R + r)*(C/G) + i (mmseg's rSoftMax layout [groups][radix][C/groups]); radix == 1 is a sigmoid;
  - relu keeps NaN (where(pre < 0, 0, pre)) and its derivative is 0 where pre <= 0, like torch's
    threshold_backward; masked-out tile entries are zeroed before any reduction because act(0) = relu(shift)
    need not be 0;
  - every sum is accumulated in accumulation_dtype(x.dtype) (fp32, fp64 for float64 inputs so gradcheck works),
    every reduction of a program is over positions it owns, and cross-program sums (dscale/dshift over samples)
    are partial buffers summed afterwards by torch: the results are deterministic.
Layouts: the launchers make x dense in kernel_layout(x) (NCHW or channels_last); in both, H and W collapse into a
single position axis p with stride stride_p, so one kernel addresses x as b*stride_b + ch*stride_c + p*stride_p.
Outputs get the layouts of the fake kernels in resnest_fast/ops/registrations.py.

The launchers are plain functions: resnest_fast/ops/registrations.py makes them the ops
resnest_fast::triton_splat_*, with the fakes and autograd the C++ ops have. This file imports nothing of
resnest_fast but the leaf resnest_fast.op_rules, so the arrow from the ops to the kernels is the only one.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from resnest_fast.op_rules import accumulation_dtype, check_common, check_logits, kernel_layout

__all__ = ["splat_pool", "splat_pool_backward", "splat_combine", "splat_combine_backward", "block_sizes"]


# ------------------------------------------------------------------------------------------------ jit helpers


@triton.jit
def _activate(v, sc, sh, AFFINE: tl.constexpr, RELU: tl.constexpr):
    """pre = v*scale + shift (per row of the tile) and act = relu(pre)."""
    pre = v
    if AFFINE:
        pre = v * sc[:, None] + sh[:, None]
    act = pre
    if RELU:
        act = tl.where(pre < 0, 0.0, pre)
    return pre, act


@triton.jit
def _times_act_grad(d, pre, RELU: tl.constexpr):
    """d * (d act / d pre): relu passes no gradient where pre <= 0 (NaN passes, like threshold_backward)."""
    if RELU:
        d = tl.where(pre <= 0, 0.0, d)
    return d


@triton.jit
def _logit_offsets(offs_c, rows, RADIX: tl.constexpr, CPG):
    """(R_P2, BLOCK_C) offsets of the logits of (r, c) in one sample's [groups][radix][C/groups] row."""
    g = offs_c // CPG
    i = offs_c - g * CPG
    return (g[None, :] * RADIX + rows[:, None]) * CPG + i[None, :]


@triton.jit
def _attention(logits_row, offs_c, c_mask, CPG, RADIX: tl.constexpr, R_P2: tl.constexpr, ACC: tl.constexpr):
    """Attention weights a (R_P2, BLOCK_C) of one sample: softmax over r (sigmoid when RADIX == 1); rows >= RADIX
    are 0. Also returns the row indices and the tile mask used to address the logits."""
    rows = tl.arange(0, R_P2)
    mask = (rows[:, None] < RADIX) & c_mask[None, :]
    offs = _logit_offsets(offs_c, rows, RADIX, CPG)
    # Channels past C read 0 (finite), padded rows -inf: no NaN anywhere, padded rows get weight 0.
    l = tl.load(logits_row + offs, mask=mask, other=0.0).to(ACC)
    if RADIX == 1:
        a = 1.0 / (1.0 + tl.exp(-l))
    else:
        l = tl.where(rows[:, None] < RADIX, l, float("-inf"))
        e = tl.exp(l - tl.max(l, axis=0)[None, :])
        a = e / tl.sum(e, axis=0)[None, :]
    return a, rows, mask, offs


@triton.jit
def _row(tile, rows, r):
    """Row r of a (R_P2, BLOCK_C) tile, as a (BLOCK_C,) vector."""
    return tl.sum(tl.where(rows[:, None] == r, tile, 0.0), axis=0)


@triton.jit
def _load_affine(scale_ptr, shift_ptr, ch, c_mask, AFFINE: tl.constexpr, ACC: tl.constexpr):
    if AFFINE:
        sc = tl.load(scale_ptr + ch, mask=c_mask, other=1.0).to(ACC)
        sh = tl.load(shift_ptr + ch, mask=c_mask, other=0.0).to(ACC)
    else:
        sc = tl.zeros(ch.shape, ACC)
        sh = tl.zeros(ch.shape, ACC)
    return sc, sh


# ------------------------------------------------------------------------------------------------------ kernels


@triton.jit
def _pool_fwd_kernel(
    x_ptr,  # (B, R*C, P) read through (stride_b, stride_c, stride_p)
    scale_ptr,  # (R*C,) or None when not AFFINE
    shift_ptr,  # (R*C,) or None when not AFFINE
    gap_ptr,  # (B, C) contiguous, x's dtype
    C,
    P,
    inv_p,
    stride_b,
    stride_c,
    stride_p,
    RADIX: tl.constexpr,
    AFFINE: tl.constexpr,
    RELU: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    # program (b, channel block): sums the R splits over all positions.
    b = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    x_b = x_ptr + b.to(tl.int64) * stride_b
    acc = tl.zeros((BLOCK_C, BLOCK_P), ACC)
    for r in tl.static_range(RADIX):
        ch = r * C + offs_c
        sc, sh = _load_affine(scale_ptr, shift_ptr, ch, c_mask, AFFINE, ACC)
        for p0 in range(0, P, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            mask = c_mask[:, None] & (offs_p < P)[None, :]
            v = tl.load(x_b + ch[:, None] * stride_c + offs_p[None, :] * stride_p, mask=mask, other=0.0).to(ACC)
            _, act = _activate(v, sc, sh, AFFINE, RELU)
            acc += tl.where(mask, act, 0.0)
    gap = tl.sum(acc, axis=1) * inv_p
    tl.store(gap_ptr + b * C + offs_c, gap.to(gap_ptr.dtype.element_ty), mask=c_mask)


@triton.jit
def _pool_bwd_kernel(
    grad_gap_ptr,  # (B, C) contiguous, x's dtype
    x_ptr,  # (B, R*C, P) read through (stride_b, stride_c, stride_p)
    scale_ptr,  # (R*C,) or None when not AFFINE
    shift_ptr,  # (R*C,) or None when not AFFINE
    dx_ptr,  # (B, R*C, P) written through (dstride_b, dstride_c, dstride_p), x's dtype
    dscale_part_ptr,  # (B, R*C) contiguous, ACC: per-sample partial of grad_scale (None when not AFFINE)
    dshift_part_ptr,  # (B, R*C) contiguous, ACC: per-sample partial of grad_shift (None when not AFFINE)
    C,
    P,
    inv_p,
    stride_b,
    stride_c,
    stride_p,
    dstride_b,
    dstride_c,
    dstride_p,
    RADIX: tl.constexpr,
    AFFINE: tl.constexpr,
    RELU: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    # program (b, channel block): d gap[b, c] / d act[b, r*C + c, p] = 1/P for every r and p.
    b = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    x_b = x_ptr + b.to(tl.int64) * stride_b
    dx_b = dx_ptr + b.to(tl.int64) * dstride_b
    g = tl.load(grad_gap_ptr + b * C + offs_c, mask=c_mask, other=0.0).to(ACC) * inv_p
    RC = RADIX * C
    for r in tl.static_range(RADIX):
        ch = r * C + offs_c
        sc, sh = _load_affine(scale_ptr, shift_ptr, ch, c_mask, AFFINE, ACC)
        dsc = tl.zeros((BLOCK_C, BLOCK_P), ACC)
        dsh = tl.zeros((BLOCK_C, BLOCK_P), ACC)
        for p0 in range(0, P, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            mask = c_mask[:, None] & (offs_p < P)[None, :]
            v = tl.load(x_b + ch[:, None] * stride_c + offs_p[None, :] * stride_p, mask=mask, other=0.0).to(ACC)
            pre, _ = _activate(v, sc, sh, AFFINE, RELU)
            d = _times_act_grad(tl.where(mask, g[:, None], 0.0), pre, RELU)
            dv = d
            if AFFINE:
                dv = d * sc[:, None]
                dsc += d * v
                dsh += d
            tl.store(
                dx_b + ch[:, None] * dstride_c + offs_p[None, :] * dstride_p,
                dv.to(dx_ptr.dtype.element_ty),
                mask=mask,
            )
        if AFFINE:
            tl.store(dscale_part_ptr + b * RC + ch, tl.sum(dsc, axis=1), mask=c_mask)
            tl.store(dshift_part_ptr + b * RC + ch, tl.sum(dsh, axis=1), mask=c_mask)


@triton.jit
def _combine_fwd_kernel(
    x_ptr,  # (B, R*C, P) read through (stride_b, stride_c, stride_p)
    logits_ptr,  # (B, R*C) contiguous, [groups][radix][C/groups] per sample
    scale_ptr,  # (R*C,) or None when not AFFINE
    shift_ptr,  # (R*C,) or None when not AFFINE
    out_ptr,  # (B, C, P) written through (ostride_b, ostride_c, ostride_p), x's dtype
    C,
    P,
    CPG,
    stride_b,
    stride_c,
    stride_p,
    ostride_b,
    ostride_c,
    ostride_p,
    RADIX: tl.constexpr,
    R_P2: tl.constexpr,
    AFFINE: tl.constexpr,
    RELU: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    # program (b, channel block, position block); the few logits of its channels are re-read by every program.
    b = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    c_mask = offs_c < C
    mask = c_mask[:, None] & (offs_p < P)[None, :]
    a, rows, _, _ = _attention(logits_ptr + b * RADIX * C, offs_c, c_mask, CPG, RADIX, R_P2, ACC)
    x_b = x_ptr + b.to(tl.int64) * stride_b
    out = tl.zeros((BLOCK_C, BLOCK_P), ACC)
    for r in tl.static_range(RADIX):
        ch = r * C + offs_c
        sc, sh = _load_affine(scale_ptr, shift_ptr, ch, c_mask, AFFINE, ACC)
        v = tl.load(x_b + ch[:, None] * stride_c + offs_p[None, :] * stride_p, mask=mask, other=0.0).to(ACC)
        _, act = _activate(v, sc, sh, AFFINE, RELU)
        out += _row(a, rows, r)[:, None] * act
    o_b = out_ptr + b.to(tl.int64) * ostride_b
    tl.store(
        o_b + offs_c[:, None] * ostride_c + offs_p[None, :] * ostride_p, out.to(out_ptr.dtype.element_ty), mask=mask
    )


@triton.jit
def _combine_bwd_kernel(
    grad_out_ptr,  # (B, C, P) read through (gstride_b, gstride_c, gstride_p)
    x_ptr,  # (B, R*C, P) read through (stride_b, stride_c, stride_p)
    logits_ptr,  # (B, R*C) contiguous, [groups][radix][C/groups] per sample
    scale_ptr,  # (R*C,) or None when not AFFINE
    shift_ptr,  # (R*C,) or None when not AFFINE
    dx_ptr,  # (B, R*C, P) written through (dstride_b, dstride_c, dstride_p), x's dtype
    dlogits_ptr,  # (B, R*C) contiguous, [groups][radix][C/groups] per sample, x's dtype
    dscale_part_ptr,  # (B, R*C) contiguous, ACC: per-sample partial of grad_scale (None when not AFFINE)
    dshift_part_ptr,  # (B, R*C) contiguous, ACC: per-sample partial of grad_shift (None when not AFFINE)
    C,
    P,
    CPG,
    gstride_b,
    gstride_c,
    gstride_p,
    stride_b,
    stride_c,
    stride_p,
    dstride_b,
    dstride_c,
    dstride_p,
    RADIX: tl.constexpr,
    R_P2: tl.constexpr,
    AFFINE: tl.constexpr,
    RELU: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    # program (b, channel block) over all positions, so it owns the complete sums d a[b, r, c] and can finish
    # with the softmax backward itself.
    b = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    RC = RADIX * C
    a, rows, l_mask, l_offs = _attention(logits_ptr + b * RC, offs_c, c_mask, CPG, RADIX, R_P2, ACC)
    x_b = x_ptr + b.to(tl.int64) * stride_b
    dx_b = dx_ptr + b.to(tl.int64) * dstride_b
    g_b = grad_out_ptr + b.to(tl.int64) * gstride_b
    da = tl.zeros((R_P2, BLOCK_C), ACC)  # d loss / d a, row r filled after the loop over split r
    for r in tl.static_range(RADIX):
        ch = r * C + offs_c
        sc, sh = _load_affine(scale_ptr, shift_ptr, ch, c_mask, AFFINE, ACC)
        a_r = _row(a, rows, r)
        da_r = tl.zeros((BLOCK_C, BLOCK_P), ACC)
        dsc = tl.zeros((BLOCK_C, BLOCK_P), ACC)
        dsh = tl.zeros((BLOCK_C, BLOCK_P), ACC)
        for p0 in range(0, P, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            mask = c_mask[:, None] & (offs_p < P)[None, :]
            g = tl.load(
                g_b + offs_c[:, None] * gstride_c + offs_p[None, :] * gstride_p, mask=mask, other=0.0
            ).to(ACC)
            v = tl.load(x_b + ch[:, None] * stride_c + offs_p[None, :] * stride_p, mask=mask, other=0.0).to(ACC)
            pre, act = _activate(v, sc, sh, AFFINE, RELU)
            da_r += g * act  # g is 0 outside the tile
            d = _times_act_grad(g * a_r[:, None], pre, RELU)
            dv = d
            if AFFINE:
                dv = d * sc[:, None]
                dsc += d * v
                dsh += d
            tl.store(
                dx_b + ch[:, None] * dstride_c + offs_p[None, :] * dstride_p,
                dv.to(dx_ptr.dtype.element_ty),
                mask=mask,
            )
        da = tl.where(rows[:, None] == r, tl.sum(da_r, axis=1)[None, :], da)
        if AFFINE:
            tl.store(dscale_part_ptr + b * RC + ch, tl.sum(dsc, axis=1), mask=c_mask)
            tl.store(dshift_part_ptr + b * RC + ch, tl.sum(dsh, axis=1), mask=c_mask)
    # softmax: dl_r = a_r * (da_r - sum_s a_s da_s); sigmoid: dl = da * a * (1 - a).
    if RADIX == 1:
        dl = da * a * (1.0 - a)
    else:
        dl = a * (da - tl.sum(a * da, axis=0)[None, :])
    tl.store(dlogits_ptr + b * RC + l_offs, dl.to(dlogits_ptr.dtype.element_ty), mask=l_mask)


# ---------------------------------------------------------------------------------------------------- launchers


def _acc_dtype(x: Tensor):
    """accumulation_dtype(x.dtype) as the kernels' ACC constexpr."""
    return {torch.float32: tl.float32, torch.float64: tl.float64}[accumulation_dtype(x.dtype)]


def block_sizes(C: int, P: int, channels_last: bool) -> Tuple[int, int]:
    """(BLOCK_C, BLOCK_P): the contiguous axis gets the long side of the tile (channels for channels_last,
    positions for NCHW), and small tensors get a single tile, which also keeps the interpreter fast."""
    if channels_last:
        block_c = min(triton.next_power_of_2(C), 64)
        block_p = min(triton.next_power_of_2(P), max(16, 2048 // block_c))
    else:
        block_p = min(triton.next_power_of_2(P), 128)
        block_c = min(triton.next_power_of_2(C), max(4, 2048 // block_p))
    return block_c, block_p


def _flat_strides(t: Tensor) -> Tuple[int, int, int]:
    """(stride_b, stride_c, stride_p) of a 4-D tensor dense in NCHW or channels_last: H and W collapse into p."""
    stride_p = t.stride(3) if t.shape[3] > 1 else t.stride(2)
    return t.stride(0), t.stride(1), stride_p


def _prepare(x: Tensor, radix: int):
    fmt = kernel_layout(x)
    xc = x.contiguous(memory_format=fmt)
    b, rc, h, w = xc.shape
    return xc, fmt, b, rc // radix, h * w


def _param_grads(x: Tensor, scale: Optional[Tensor], shift: Optional[Tensor]):
    """Empty (0,) tensors of x's dtype when there is no affine, like the C++ kernels; else zeros like scale."""
    if scale is None:
        return x.new_empty((0,)), x.new_empty((0,))
    return torch.zeros(scale.shape, dtype=scale.dtype, device=x.device), torch.zeros(
        shift.shape, dtype=shift.dtype, device=x.device
    )


def _dense(t: Optional[Tensor]) -> Optional[Tensor]:
    """scale, shift and logits are addressed as dense rows."""
    return None if t is None else t.contiguous()


def _check_grad(name: str, t: Tensor, shape, x: Tensor) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if t.dtype != x.dtype:
        raise TypeError(f"{name} must have x's dtype ({x.dtype}), got {t.dtype}")


def splat_pool(x: Tensor, scale: Optional[Tensor], shift: Optional[Tensor], radix: int, relu: bool) -> Tensor:
    """gap (B, C) = mean over (h, w) of sum over r of act(x[:, r*C + c]); x (B, R*C, H, W), any layout."""
    check_common(x, scale, shift, radix)
    scale, shift = _dense(scale), _dense(shift)
    xc, fmt, B, C, P = _prepare(x, radix)
    gap = torch.empty((B, C), dtype=x.dtype, device=x.device)
    if B * C == 0:
        return gap
    if P == 0:
        raise RuntimeError(f"resnest_fast: splat_pool needs H*W > 0, got x of shape {tuple(x.shape)}")
    block_c, block_p = block_sizes(C, P, fmt == torch.channels_last)
    _pool_fwd_kernel[(B, triton.cdiv(C, block_c))](
        xc, scale, shift, gap, C, P, 1.0 / P, *_flat_strides(xc),
        RADIX=radix, AFFINE=scale is not None, RELU=relu, ACC=_acc_dtype(x), BLOCK_C=block_c, BLOCK_P=block_p,
    )
    return gap


def splat_pool_backward(
    grad_gap: Tensor, x: Tensor, scale: Optional[Tensor], shift: Optional[Tensor], radix: int, relu: bool
) -> Tuple[Tensor, Tensor, Tensor]:
    """(grad_x in x's kernel layout, grad_scale, grad_shift); the last two are (0,) when scale is None."""
    check_common(x, scale, shift, radix)
    _check_grad("grad_gap", grad_gap, (x.shape[0], x.shape[1] // radix), x)
    scale, shift = _dense(scale), _dense(shift)
    xc, fmt, B, C, P = _prepare(x, radix)
    dx = torch.empty(xc.shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    dscale, dshift = _param_grads(x, scale, shift)
    if xc.numel() == 0:
        return dx, dscale, dshift
    affine = scale is not None
    acc = accumulation_dtype(x.dtype)
    dsc_part = torch.empty((B, radix * C), dtype=acc, device=x.device) if affine else None
    dsh_part = torch.empty((B, radix * C), dtype=acc, device=x.device) if affine else None
    block_c, block_p = block_sizes(C, P, fmt == torch.channels_last)
    _pool_bwd_kernel[(B, triton.cdiv(C, block_c))](
        grad_gap.contiguous(), xc, scale, shift, dx, dsc_part, dsh_part, C, P, 1.0 / P,
        *_flat_strides(xc), *_flat_strides(dx),
        RADIX=radix, AFFINE=affine, RELU=relu, ACC=_acc_dtype(x), BLOCK_C=block_c, BLOCK_P=block_p,
    )
    if affine:
        dscale = dsc_part.sum(0).to(scale.dtype)
        dshift = dsh_part.sum(0).to(shift.dtype)
    return dx, dscale, dshift


def splat_combine(
    x: Tensor, logits: Tensor, scale: Optional[Tensor], shift: Optional[Tensor], radix: int, groups: int, relu: bool
) -> Tensor:
    """out (B, C, H, W) in x's kernel layout = sum over r of a[b, r, c] * act(x[:, r*C + c])."""
    check_common(x, scale, shift, radix)
    check_logits(x, logits, radix, groups)
    scale, shift, logits = _dense(scale), _dense(shift), _dense(logits)
    xc, fmt, B, C, P = _prepare(x, radix)
    out = torch.empty((B, C, x.shape[2], x.shape[3]), dtype=x.dtype, device=x.device, memory_format=fmt)
    if out.numel() == 0:
        return out
    block_c, block_p = block_sizes(C, P, fmt == torch.channels_last)
    grid = (B, triton.cdiv(C, block_c), triton.cdiv(P, block_p))
    _combine_fwd_kernel[grid](
        xc, logits, scale, shift, out, C, P, C // groups, *_flat_strides(xc), *_flat_strides(out),
        RADIX=radix, R_P2=triton.next_power_of_2(radix), AFFINE=scale is not None, RELU=relu,
        ACC=_acc_dtype(x), BLOCK_C=block_c, BLOCK_P=block_p,
    )
    return out


def splat_combine_backward(
    grad_out: Tensor,
    x: Tensor,
    logits: Tensor,
    scale: Optional[Tensor],
    shift: Optional[Tensor],
    radix: int,
    groups: int,
    relu: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(grad_x in x's kernel layout, grad_logits (B, R*C), grad_scale, grad_shift); the last two are (0,) when
    scale is None."""
    check_common(x, scale, shift, radix)
    check_logits(x, logits, radix, groups)
    _check_grad("grad_out", grad_out, (x.shape[0], x.shape[1] // radix, x.shape[2], x.shape[3]), x)
    scale, shift, logits = _dense(scale), _dense(shift), _dense(logits)
    xc, fmt, B, C, P = _prepare(x, radix)
    go = grad_out.contiguous(memory_format=fmt)
    dx = torch.empty(xc.shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    dlogits = torch.zeros(logits.shape, dtype=logits.dtype, device=logits.device)
    dscale, dshift = _param_grads(x, scale, shift)
    if xc.numel() == 0:
        return dx, dlogits, dscale, dshift
    affine = scale is not None
    acc = accumulation_dtype(x.dtype)
    dsc_part = torch.empty((B, radix * C), dtype=acc, device=x.device) if affine else None
    dsh_part = torch.empty((B, radix * C), dtype=acc, device=x.device) if affine else None
    block_c, block_p = block_sizes(C, P, fmt == torch.channels_last)
    _combine_bwd_kernel[(B, triton.cdiv(C, block_c))](
        go, xc, logits, scale, shift, dx, dlogits, dsc_part, dsh_part, C, P, C // groups,
        *_flat_strides(go), *_flat_strides(xc), *_flat_strides(dx),
        RADIX=radix, R_P2=triton.next_power_of_2(radix), AFFINE=affine, RELU=relu,
        ACC=_acc_dtype(x), BLOCK_C=block_c, BLOCK_P=block_p,
    )
    if affine:
        dscale = dsc_part.sum(0).to(scale.dtype)
        dshift = dsh_part.sum(0).to(shift.dtype)
    return dx, dlogits, dscale, dshift
