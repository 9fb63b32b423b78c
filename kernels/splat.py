"""Triton kernels of the fused split-attention ops: splat_pool and splat_combine, forward and backward, and the
training-only ones: splat_bn_stats and the two passes of the module's fused backward.

What is fused: the activation act(v) = relu(v*scale + shift) of the grouped conv's output x (B, R*C, H, W) is
never written to memory. splat_pool reduces it straight to the global context gap (B, C); splat_combine applies
the radix softmax of the logits and sums the weighted splits into out (B, C, H, W); the two backward kernels
recompute act and its derivative from x (the only activation saved), write grad_x, and reduce the gradients of
the attention weights, scale and shift in the same pass. In training, splat_bn_stats gives bn0's batch statistics
in one read of x; splat_backward_reduce (the combine backward's kernel without grad_x, with the pool's sums) and
splat_backward_input then write grad_x once for combine, pool and the statistics together.

Why it is correct: the maths is the one of resnest_fast/ops/splat_pool.py, splat_combine.py, splat_bn_stats.py and
splat_backward.py (the pure-PyTorch references, the oracle of tests/kernels/test_splat_triton.py) and of
csrc/ops/splat_math.h (the C++ kernels):
  - split r of channel c is channel r*C + c of x; the logit of (r, c), c = g*(C/G) + i, sits at
    (g*R + r)*(C/G) + i (mmseg's rSoftMax layout [groups][radix][C/groups]); radix == 1 is a sigmoid;
  - relu keeps NaN (where(pre < 0, 0, pre)) and its derivative is 0 where pre <= 0, like torch's
    threshold_backward; masked-out tile entries are zeroed before any reduction because act(0) = relu(shift)
    need not be 0;
  - every sum is accumulated in accumulation_dtype(x.dtype) (fp32, fp64 for float64 inputs so gradcheck works);
    no float constant comes from Python (the compiler would type it fp32, the interpreter keeps a double): the
    mean divides by the int P inside the kernels, in that dtype;
  - reductions have two deterministic stages, never atomics: each program writes the partial sums of the
    positions it owns to its own slot of a (B, chunks, .) workspace, then a small kernel (_sum_rows_kernel,
    _combine_bwd_finish_kernel) adds the chunks in index order. Same inputs, same bits, on every run.
Launch geometry (launch_params, the one function the launchers and launch_model call): a flat 1-D grid of
(sample, channel block, position chunk) programs, sized so that every ResNeSt-101-D8 stage shape, batch 1
included, gives >= 4 programs per SM (tests/kernels/test_launch_model.py); offsets are int64; the radix is a
compile-time constant; the only integer divisions are per program. The launchers run on x's device and its
current stream.
Layouts: the launchers make x dense in kernel_layout(x) (NCHW or channels_last); in both, H and W collapse into a
single position axis p with stride stride_p, so one kernel addresses x as b*stride_b + ch*stride_c + p*stride_p.
Outputs get the layouts of the fake kernels in resnest_fast/ops/registrations.py. scripts/triton_compile_check.py
compiles the kernels for sm_80 and sm_90 without a GPU.

The launchers are plain functions: resnest_fast/ops/registrations.py makes them the ops
resnest_fast::triton_splat_*, with the fakes and autograd the C++ ops have. This file imports nothing of
resnest_fast but the leaf resnest_fast.op_rules, so the arrow from the ops to the kernels is the only one.
"""
import contextlib
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from resnest_fast.op_rules import accumulation_dtype, check_affine, check_common, check_logits, kernel_layout

__all__ = [
    "splat_pool",
    "splat_pool_backward",
    "splat_combine",
    "splat_combine_backward",
    "splat_bn_stats",
    "splat_backward_reduce",
    "splat_backward_input",
    "block_sizes",
    "launch_params",
    "launch_model",
    "LaunchParams",
    "LaunchModel",
    "record_launches",
    "KERNELS",
]


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
def _program_coords(C_BLOCKS, CHUNKS):
    """The 1-D grid (a flat grid never meets the 65535 limit of grid dims 1 and 2) unfolded into (sample b,
    channel block cb, position chunk k); one scalar division per program, none per element. b is int64, so every
    offset derived from it is too."""
    pid = tl.program_id(0).to(tl.int64)
    rest = pid // CHUNKS
    k = pid - rest * CHUNKS
    b = rest // C_BLOCKS
    cb = rest - b * C_BLOCKS
    return b, cb, k


@triton.jit
def _chunk(C, P, C_BLOCKS, CHUNKS, CHUNK_P, BLOCK_C: tl.constexpr):
    """A program of the reducing kernels (pool, pool_backward, combine_backward, backward_reduce, bn_stats): its
    sample b and chunk k, its channels with their mask, and the positions [p_start, p_end) its BLOCK_P tiles walk."""
    b, cb, k = _program_coords(C_BLOCKS, CHUNKS)
    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    p_start = k * CHUNK_P
    return b, k, offs_c, offs_c < C, p_start, tl.minimum(p_start + CHUNK_P, P)


@triton.jit
def _tile_offsets(ch, offs_p, stride_c, stride_p):
    """int64 offsets of a (BLOCK_C, BLOCK_P) tile inside one sample: a sample of a stage shape at 1024x2048 already
    holds 1024 x 131072 elements, and nothing bounds it below 2**31."""
    return ch.to(tl.int64)[:, None] * stride_c + offs_p.to(tl.int64)[None, :] * stride_p


@triton.jit
def _tile_with_attention(logits_ptr, C, P, CPG, C_BLOCKS, CHUNKS, RADIX: tl.constexpr, R_P2: tl.constexpr,
                         ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """The single (BLOCK_C, BLOCK_P) tile of a program of the elementwise kernels (combine, backward_input): its
    sample b, channels and positions with their masks, and the attention weights a of those channels (rows: their
    row indices)."""
    b, cb, k = _program_coords(C_BLOCKS, CHUNKS)
    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_p = k * BLOCK_P + tl.arange(0, BLOCK_P)
    c_mask = offs_c < C
    mask = c_mask[:, None] & (offs_p < P)[None, :]
    a, rows, _, _ = _attention(logits_ptr + b * RADIX * C, offs_c, c_mask, CPG, RADIX, R_P2, ACC)
    return b, offs_c, offs_p, c_mask, mask, a, rows


@triton.jit
def _pool_partial_kernel(
    x_ptr,  # (B, R*C, P) read through (stride_b, stride_c, stride_p)
    scale_ptr,  # (R*C,) or None when not AFFINE
    shift_ptr,  # (R*C,) or None when not AFFINE
    part_ptr,  # (B, CHUNKS, C) contiguous, ACC: sum over the chunk's positions and the R splits of act
    C,
    P,
    C_BLOCKS,
    CHUNKS,
    CHUNK_P,  # positions per chunk, a multiple of BLOCK_P
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
    # program (b, channel block, chunk): stage 1 of the mean; _sum_rows_kernel sums the chunks in a fixed order.
    # The R splits of a tile are loaded in the same step (r innermost) so R tiles are in flight per program.
    b, k, offs_c, c_mask, p_start, p_end = _chunk(C, P, C_BLOCKS, CHUNKS, CHUNK_P, BLOCK_C)
    x_b = x_ptr + b * stride_b
    acc = tl.zeros((BLOCK_C, BLOCK_P), ACC)
    for p0 in range(p_start, p_end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask = c_mask[:, None] & (offs_p < p_end)[None, :]
        for r in tl.static_range(RADIX):
            ch = r * C + offs_c
            sc, sh = _load_affine(scale_ptr, shift_ptr, ch, c_mask, AFFINE, ACC)
            v = tl.load(x_b + _tile_offsets(ch, offs_p, stride_c, stride_p), mask=mask, other=0.0).to(ACC)
            _, act = _activate(v, sc, sh, AFFINE, RELU)
            acc += tl.where(mask, act, 0.0)
    tl.store(part_ptr + (b * CHUNKS + k) * C + offs_c, tl.sum(acc, axis=1), mask=c_mask)


@triton.jit
def _sum_rows_kernel(
    part_ptr,  # (G, ROWS, N) contiguous, ACC: partial sums
    out_ptr,  # (G, N) contiguous, any float dtype
    N,
    ROWS,
    DIVISOR,  # int: out = sum / DIVISOR, divided here in ACC (float64 for float64: no float32 constant)
    N_BLOCKS,
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # stage 2 of every reduction: rows summed one after the other in index order, so the result is the same bits
    # on every run (no atomics).
    pid = tl.program_id(0).to(tl.int64)
    g = pid // N_BLOCKS
    offs = (pid - g * N_BLOCKS) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = offs < N
    base = part_ptr + g * ROWS * N
    acc = tl.zeros((BLOCK_N,), ACC)
    for i in range(0, ROWS):
        acc += tl.load(base + i * N + offs, mask=mask, other=0.0).to(ACC)
    tl.store(out_ptr + g * N + offs, (acc / DIVISOR).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _pool_bwd_kernel(
    grad_gap_ptr,  # (B, C) contiguous, x's dtype
    x_ptr,  # (B, R*C, P) read through (stride_b, stride_c, stride_p)
    scale_ptr,  # (R*C,) or None when not AFFINE
    shift_ptr,  # (R*C,) or None when not AFFINE
    dx_ptr,  # (B, R*C, P) written through (dstride_b, dstride_c, dstride_p), x's dtype
    dscale_part_ptr,  # (B, CHUNKS, R*C) contiguous, ACC: partials of grad_scale (None when not AFFINE)
    dshift_part_ptr,  # (B, CHUNKS, R*C) contiguous, ACC: partials of grad_shift (None when not AFFINE)
    C,
    P,
    C_BLOCKS,
    CHUNKS,
    CHUNK_P,
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
    # program (b, channel block, chunk): d gap[b, c] / d act[b, r*C + c, p] = 1/P for every r and p. The division
    # by the int P happens here, in ACC. r is innermost so the R splits of a tile are loaded in the same step; the
    # grad_scale/grad_shift partials of split r are row r of (R_P2, BLOCK_C) accumulators, reduced every step.
    b, k, offs_c, c_mask, p_start, p_end = _chunk(C, P, C_BLOCKS, CHUNKS, CHUNK_P, BLOCK_C)
    x_b = x_ptr + b * stride_b
    dx_b = dx_ptr + b * dstride_b
    g = tl.load(grad_gap_ptr + b * C + offs_c, mask=c_mask, other=0.0).to(ACC) / P
    RC = RADIX * C
    rows = tl.arange(0, R_P2)
    dsc = tl.zeros((R_P2, BLOCK_C), ACC)
    dsh = tl.zeros((R_P2, BLOCK_C), ACC)
    for p0 in range(p_start, p_end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask = c_mask[:, None] & (offs_p < p_end)[None, :]
        for r in tl.static_range(RADIX):
            ch = r * C + offs_c
            sc, sh = _load_affine(scale_ptr, shift_ptr, ch, c_mask, AFFINE, ACC)
            v = tl.load(x_b + _tile_offsets(ch, offs_p, stride_c, stride_p), mask=mask, other=0.0).to(ACC)
            pre, _ = _activate(v, sc, sh, AFFINE, RELU)
            d = _times_act_grad(tl.where(mask, g[:, None], 0.0), pre, RELU)
            dv = d
            if AFFINE:
                dv = d * sc[:, None]
                dsc = tl.where(rows[:, None] == r, dsc + tl.sum(d * v, axis=1)[None, :], dsc)
                dsh = tl.where(rows[:, None] == r, dsh + tl.sum(d, axis=1)[None, :], dsh)
            tl.store(dx_b + _tile_offsets(ch, offs_p, dstride_c, dstride_p), dv.to(dx_ptr.dtype.element_ty), mask=mask)
    if AFFINE:
        part = (b * CHUNKS + k) * RC + rows[:, None] * C + offs_c[None, :]
        p_mask = (rows[:, None] < RADIX) & c_mask[None, :]
        tl.store(dscale_part_ptr + part, dsc, mask=p_mask)
        tl.store(dshift_part_ptr + part, dsh, mask=p_mask)


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
    C_BLOCKS,
    CHUNKS,  # position blocks: one BLOCK_P tile per program
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
    b, offs_c, offs_p, c_mask, mask, a, rows = _tile_with_attention(logits_ptr, C, P, CPG, C_BLOCKS, CHUNKS, RADIX,
                                                                    R_P2, ACC, BLOCK_C, BLOCK_P)
    x_b = x_ptr + b * stride_b
    out = tl.zeros((BLOCK_C, BLOCK_P), ACC)
    for r in tl.static_range(RADIX):
        ch = r * C + offs_c
        sc, sh = _load_affine(scale_ptr, shift_ptr, ch, c_mask, AFFINE, ACC)
        v = tl.load(x_b + _tile_offsets(ch, offs_p, stride_c, stride_p), mask=mask, other=0.0).to(ACC)
        _, act = _activate(v, sc, sh, AFFINE, RELU)
        out += _row(a, rows, r)[:, None] * act
    o_b = out_ptr + b * ostride_b
    tl.store(o_b + _tile_offsets(offs_c, offs_p, ostride_c, ostride_p), out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _combine_bwd_kernel(
    grad_out_ptr,  # (B, C, P) read through (gstride_b, gstride_c, gstride_p)
    x_ptr,  # (B, R*C, P) read through (stride_b, stride_c, stride_p)
    logits_ptr,  # (B, R*C) contiguous, [groups][radix][C/groups] per sample
    scale_ptr,  # (R*C,) or None when not AFFINE
    shift_ptr,  # (R*C,) or None when not AFFINE
    dx_ptr,  # (B, R*C, P) written through (dstride_b, dstride_c, dstride_p), x's dtype (None when not WRITE_DX)
    da_part_ptr,  # (B, CHUNKS, R*C) contiguous, ACC: partials of d loss / d a[b, r, c] at r*C + c
    dscale_part_ptr,  # (B, CHUNKS, R*C) contiguous, ACC: partials of grad_scale (None when not AFFINE)
    dshift_part_ptr,  # (B, CHUNKS, R*C) contiguous, ACC: partials of grad_shift (None when not AFFINE)
    mx_part_ptr,  # (B, CHUNKS, R*C) contiguous, ACC: partials of sum_p act'(pre)*x (None when not POOL_SUMS)
    m_part_ptr,  # (B, CHUNKS, R*C) contiguous, ACC: partials of sum_p act'(pre) (None when not POOL_SUMS)
    C,
    P,
    CPG,
    C_BLOCKS,
    CHUNKS,
    CHUNK_P,
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
    WRITE_DX: tl.constexpr,
    POOL_SUMS: tl.constexpr,
):
    # program (b, channel block, chunk): grad_x of its tiles (WRITE_DX: splat_combine_backward), and stage 1 of the
    # sums over positions (d a, and grad_scale/grad_shift); _combine_bwd_finish_kernel ends with the softmax
    # backward. splat_backward_reduce (the first pass of the module's fused backward) writes no grad_x and also
    # sums act'(pre)*x and act'(pre) per (sample, split channel) (POOL_SUMS).
    b, k, offs_c, c_mask, p_start, p_end = _chunk(C, P, C_BLOCKS, CHUNKS, CHUNK_P, BLOCK_C)
    RC = RADIX * C
    a, rows, _, _ = _attention(logits_ptr + b * RC, offs_c, c_mask, CPG, RADIX, R_P2, ACC)
    x_b = x_ptr + b * stride_b
    g_b = grad_out_ptr + b * gstride_b
    part_row = (b * CHUNKS + k) * RC
    for r in tl.static_range(RADIX):
        ch = r * C + offs_c
        sc, sh = _load_affine(scale_ptr, shift_ptr, ch, c_mask, AFFINE, ACC)
        a_r = _row(a, rows, r)
        da_r = tl.zeros((BLOCK_C, BLOCK_P), ACC)
        dsc = tl.zeros((BLOCK_C, BLOCK_P), ACC)
        dsh = tl.zeros((BLOCK_C, BLOCK_P), ACC)
        mx = tl.zeros((BLOCK_C,), ACC)  # reduced every step: two fewer tiles live in registers
        m = tl.zeros((BLOCK_C,), ACC)
        for p0 in range(p_start, p_end, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            mask = c_mask[:, None] & (offs_p < p_end)[None, :]
            g = tl.load(g_b + _tile_offsets(offs_c, offs_p, gstride_c, gstride_p), mask=mask, other=0.0).to(ACC)
            v = tl.load(x_b + _tile_offsets(ch, offs_p, stride_c, stride_p), mask=mask, other=0.0).to(ACC)
            pre, act = _activate(v, sc, sh, AFFINE, RELU)
            da_r += g * act  # g is 0 outside the tile
            d = _times_act_grad(g * a_r[:, None], pre, RELU)
            if AFFINE:
                dsc += d * v
                dsh += d
            if POOL_SUMS:  # act'(pre) of the tile's own entries only: act(0) = relu(shift) need not be 0
                mk = _times_act_grad(mask.to(ACC), pre, RELU)
                mx += tl.sum(mk * v, axis=1)
                m += tl.sum(mk, axis=1)
            if WRITE_DX:
                dv = d
                if AFFINE:
                    dv = d * sc[:, None]
                tl.store(dx_ptr + b * dstride_b + _tile_offsets(ch, offs_p, dstride_c, dstride_p),
                         dv.to(dx_ptr.dtype.element_ty), mask=mask)
        tl.store(da_part_ptr + part_row + ch, tl.sum(da_r, axis=1), mask=c_mask)
        if AFFINE:
            tl.store(dscale_part_ptr + part_row + ch, tl.sum(dsc, axis=1), mask=c_mask)
            tl.store(dshift_part_ptr + part_row + ch, tl.sum(dsh, axis=1), mask=c_mask)
        if POOL_SUMS:
            tl.store(mx_part_ptr + part_row + ch, mx, mask=c_mask)
            tl.store(m_part_ptr + part_row + ch, m, mask=c_mask)


@triton.jit
def _combine_bwd_finish_kernel(
    da_part_ptr,  # (B, CHUNKS, R*C) contiguous, ACC: partials of d loss / d a[b, r, c] at r*C + c
    logits_ptr,  # (B, R*C) contiguous, [groups][radix][C/groups] per sample
    dlogits_ptr,  # (B, R*C) contiguous, [groups][radix][C/groups] per sample, x's dtype
    C,
    CPG,
    C_BLOCKS,
    CHUNKS,
    RADIX: tl.constexpr,
    R_P2: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # program (b, channel block): stage 2 of d a (chunks summed in index order), then the softmax backward.
    pid = tl.program_id(0).to(tl.int64)
    b = pid // C_BLOCKS
    offs_c = (pid - b * C_BLOCKS) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    RC = RADIX * C
    a, rows, l_mask, l_offs = _attention(logits_ptr + b * RC, offs_c, c_mask, CPG, RADIX, R_P2, ACC)
    part_offs = rows[:, None] * C + offs_c[None, :]  # (R_P2, BLOCK_C): split-major, like the partials
    da = tl.zeros((R_P2, BLOCK_C), ACC)
    for k in range(0, CHUNKS):
        da += tl.load(da_part_ptr + (b * CHUNKS + k) * RC + part_offs, mask=l_mask, other=0.0)
    # softmax: dl_r = a_r * (da_r - sum_s a_s da_s); sigmoid: dl = da * a * (1 - a).
    if RADIX == 1:
        dl = da * a * (1.0 - a)
    else:
        dl = a * (da - tl.sum(a * da, axis=0)[None, :])
    tl.store(dlogits_ptr + b * RC + l_offs, dl.to(dlogits_ptr.dtype.element_ty), mask=l_mask)


@triton.jit
def _backward_input_kernel(
    grad_out_ptr,  # (B, C, P) read through (gstride_b, gstride_c, gstride_p)
    grad_gap_ptr,  # (B, C) contiguous
    x_ptr,  # (B, R*C, P) read through (stride_b, stride_c, stride_p)
    logits_ptr,  # (B, R*C) contiguous, [groups][radix][C/groups] per sample
    scale_ptr,  # (R*C,) bn0's scale
    shift_ptr,  # (R*C,) bn0's shift
    coef_a_ptr,  # (R*C,) the batch statistics' gradient terms (zeros with running statistics)
    coef_b_ptr,  # (R*C,)
    dx_ptr,  # (B, R*C, P) written through (dstride_b, dstride_c, dstride_p), x's dtype
    C,
    P,
    CPG,
    C_BLOCKS,
    CHUNKS,  # position blocks: one BLOCK_P tile per program
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
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    # program (b, channel block, position block): the second pass of the module's fused backward, bn0 and relu on,
    #   grad_x = scale * act'(pre) * (grad_out * a + grad_gap / P) + coef_a * x + coef_b
    # (splat_math.h's splat_backward_input_value); grad_out's tile is read once for the R splits.
    b, offs_c, offs_p, c_mask, mask, a, rows = _tile_with_attention(logits_ptr, C, P, CPG, C_BLOCKS, CHUNKS, RADIX,
                                                                    R_P2, ACC, BLOCK_C, BLOCK_P)
    g = tl.load(grad_out_ptr + b * gstride_b + _tile_offsets(offs_c, offs_p, gstride_c, gstride_p), mask=mask,
                other=0.0).to(ACC)
    gg = tl.load(grad_gap_ptr + b * C + offs_c, mask=c_mask, other=0.0).to(ACC) / P
    x_b = x_ptr + b * stride_b
    dx_b = dx_ptr + b * dstride_b
    for r in tl.static_range(RADIX):
        ch = r * C + offs_c
        sc, sh = _load_affine(scale_ptr, shift_ptr, ch, c_mask, True, ACC)
        ca, cb_ = _load_affine(coef_a_ptr, coef_b_ptr, ch, c_mask, True, ACC)
        v = tl.load(x_b + _tile_offsets(ch, offs_p, stride_c, stride_p), mask=mask, other=0.0).to(ACC)
        pre, _ = _activate(v, sc, sh, True, True)
        d = _times_act_grad(g * _row(a, rows, r)[:, None] + gg[:, None], pre, True)
        dv = sc[:, None] * d + ca[:, None] * v + cb_[:, None]
        tl.store(dx_b + _tile_offsets(ch, offs_p, dstride_c, dstride_p), dv.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _merge_moments(mean, m2, n_before, t_mean, t_m2, n_t):
    """Chan et al.'s pairwise update: (mean, m2) of n_before values and (t_mean, t_m2) of n_t more (n_t >= 1, both
    counts already in the accumulation dtype) -> (mean, m2) of all of them. No difference of large sums, so no
    cancellation when the mean dwarfs the spread. delta is scaled by the weight before it is squared: on the first
    merge (n_before == 0) delta is the tile's mean itself, and delta*delta overflows fp32 from |mean| ~ 1.8e19,
    where inf * 0 would make m2 NaN; delta * (delta * 0) is 0."""
    n = n_before + n_t
    delta = t_mean - mean
    return mean + delta * (n_t / n), m2 + t_m2 + delta * (delta * (n_before * (n_t / n)))


@triton.jit
def _bn_stats_partial_kernel(
    x_ptr,  # (B, K, P) read through (stride_b, stride_c, stride_p)
    mean_part_ptr,  # (B, CHUNKS, K) contiguous, ACC: mean of the chunk's positions
    m2_part_ptr,  # (B, CHUNKS, K) contiguous, ACC: sum of squared deviations from that mean
    K,
    P,
    C_BLOCKS,
    CHUNKS,
    CHUNK_P,  # positions per chunk, a multiple of BLOCK_P
    stride_b,
    stride_c,
    stride_p,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    # program (b, channel block, chunk): stage 1 of bn0's batch statistics. Each tile's mean and squared deviations
    # are exact two-pass sums over values in registers; the tiles merge by _merge_moments; _bn_stats_finish_kernel
    # merges the chunks in index order.
    b, k, offs_c, c_mask, p_start, p_end = _chunk(K, P, C_BLOCKS, CHUNKS, CHUNK_P, BLOCK_C)
    x_b = x_ptr + b * stride_b
    mean = tl.zeros((BLOCK_C,), ACC)
    m2 = tl.zeros((BLOCK_C,), ACC)
    for p0 in range(p_start, p_end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask = c_mask[:, None] & (offs_p < p_end)[None, :]
        v = tl.load(x_b + _tile_offsets(offs_c, offs_p, stride_c, stride_p), mask=mask, other=0.0).to(ACC)
        n_t = (tl.minimum(p_end - p0, BLOCK_P)).to(ACC)
        t_mean = tl.sum(v, axis=1) / n_t
        dev = tl.where(mask, v - t_mean[:, None], 0.0)
        mean, m2 = _merge_moments(mean, m2, (p0 - p_start).to(ACC), t_mean, tl.sum(dev * dev, axis=1), n_t)
    part = (b * CHUNKS + k) * K + offs_c
    tl.store(mean_part_ptr + part, mean, mask=c_mask)
    tl.store(m2_part_ptr + part, m2, mask=c_mask)


@triton.jit
def _bn_stats_finish_kernel(
    mean_part_ptr,  # (ROWS, K) contiguous, ACC: per (sample, chunk), in index order
    m2_part_ptr,  # (ROWS, K) contiguous, ACC
    var_ptr,  # (K,) ACC: biased variance
    mean_ptr,  # (K,) ACC
    K,
    P,
    ROWS,
    CHUNKS,
    CHUNK_P,
    N,  # B*P: values per channel
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # stage 2: the (sample, chunk) rows merged one after the other in index order (same bits on every run). Row
    # (b, k) holds min(CHUNK_P, P - k*CHUNK_P) positions and follows b*P + k*CHUNK_P of them.
    offs = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = offs < K
    mean = tl.zeros((BLOCK_N,), ACC)
    m2 = tl.zeros((BLOCK_N,), ACC)
    for i in range(0, ROWS):
        row = tl.cast(i, tl.int64)
        b = row // CHUNKS
        p_start = (row - b * CHUNKS) * CHUNK_P
        n_t = tl.minimum(P - p_start, CHUNK_P).to(ACC)
        n_before = (b * P + p_start).to(ACC)
        t_mean = tl.load(mean_part_ptr + row * K + offs, mask=mask, other=0.0)
        t_m2 = tl.load(m2_part_ptr + row * K + offs, mask=mask, other=0.0)
        mean, m2 = _merge_moments(mean, m2, n_before, t_mean, t_m2, n_t)
    tl.store(var_ptr + offs, m2 / N, mask=mask)
    tl.store(mean_ptr + offs, mean, mask=mask)


# ----------------------------------------------------------------------------------------------- launch geometry
#
# Why a heuristic and not triton.autotune: the work splits into a fixed number of partial sums whose workspace the
# launcher allocates, so the chunking must be known before the launch; autotune would also time candidates on the
# first call of every new shape (a stall in the middle of training) and cannot run under the interpreter. The
# rules below follow from the hardware and are checked by tests/kernels/test_launch_model.py.

# The SM count the model assumes when the tensors are not on a GPU (interpreter, meta tensors): an H100 SXM.
DEFAULT_NUM_SMS = 132
# The launchers aim at this many programs per SM (the goal is >= 4: rounding the chunks loses up to half).
TARGET_PROGRAMS_PER_SM = 8
MIN_PROGRAMS_PER_SM = 4  # the goal the launch-model test holds every stage shape to
MIN_BYTES_IN_FLIGHT_PER_SM = 16 * 1024  # Little's law on an H100: ~3.35 TB/s x ~600 ns / 132 SMs
# Elements per (BLOCK_C, BLOCK_P) tile: 16 per thread at 4 warps, i.e. four 16-byte vector loads per thread in
# fp32; halved for fp64, whose accumulators take two registers each (keeps combine_backward below ~128 regs).
TILE_ELEMENTS = 2048
MIN_TILE_ELEMENTS = 512  # 4 per thread: below this a program is mostly index arithmetic
NUM_WARPS = 4
FINISH_BLOCK_N = 256  # outputs per program of _sum_rows_kernel
# sm_80 and sm_90 alike: per SM 64K 32-bit registers, 64 resident warps, 32 resident blocks.
REGS_PER_SM, WARPS_PER_SM, BLOCKS_PER_SM = 65536, 64, 32
# The ops' main kernels: the four of splat_pool/splat_combine, then the training-only ones (bn0's batch statistics
# and the two passes of the module's fused backward).
KERNELS = ("pool", "pool_backward", "combine", "combine_backward", "bn_stats", "backward_reduce", "backward_input")
# One (BLOCK_P-tile) per program, nothing to reduce over positions.
_ELEMENTWISE = ("combine", "backward_input")


def block_sizes(C: int, P: int, channels_last: bool, dtype: torch.dtype = torch.float32) -> Tuple[int, int]:
    """(BLOCK_C, BLOCK_P): the contiguous axis gets the long side of the tile (channels for channels_last,
    positions for NCHW) so loads coalesce and vectorise, and small tensors get a single tile, which also keeps the
    interpreter fast."""
    tile = TILE_ELEMENTS // 2 if dtype == torch.float64 else TILE_ELEMENTS
    if channels_last:
        block_c = min(triton.next_power_of_2(C), 64)
        block_p = min(triton.next_power_of_2(P), max(16, tile // block_c))
    else:
        block_p = min(triton.next_power_of_2(P), 128)
        block_c = min(triton.next_power_of_2(C), max(4, tile // block_p))
    return block_c, block_p


@dataclass(frozen=True)
class LaunchParams:
    """How one op is launched: a 1-D grid of `programs` = B x c_blocks x chunks programs, each owning BLOCK_C
    channels of one sample and `chunk_p` positions (walked in BLOCK_P tiles; one tile for combine); the reductions
    then finish in `finish_programs` programs that sum `finish_rows` partials per output."""

    kernel: str
    block_c: int
    block_p: int
    num_warps: int
    c_blocks: int
    chunks: int
    chunk_p: int
    programs: int
    finish_rows: int
    finish_programs: int
    finish_block: int


def launch_params(
    kernel: str,
    B: int,
    C: int,
    H: int,
    W: int,
    radix: int,
    dtype: torch.dtype,
    channels_last: bool,
    num_sms: int = DEFAULT_NUM_SMS,
    affine: bool = True,
) -> LaunchParams:
    """The launch geometry of `kernel` (one of KERNELS) for x (B, radix*C, H, W): what the launchers run and what
    launch_model describes.

    Positions split into chunks of whole BLOCK_P tiles until B x c_blocks x chunks reaches
    TARGET_PROGRAMS_PER_SM x num_sms (or every program has a single tile): at batch 1 a whole-plane program per
    channel block would leave most SMs idle. The chunks' partial sums make the reductions two-staged. Where even
    one tile per program gives fewer than MIN_PROGRAMS_PER_SM x num_sms programs, the tile shrinks (down to
    MIN_TILE_ELEMENTS); so the block sizes, compile-time constants, depend on the shape and the SM count.
    bn_stats reduces each of x's radix*C channels on its own: it is laid out as radix 1 over radix*C channels."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "bn_stats":
        C, radix = radix * C, 1
    P = H * W
    block_c, block_p = block_sizes(C, P, channels_last, dtype)
    # Small planes (batch 1, layer4 at 512x512): shrink the tile until there are enough tiles to go round,
    # halving the strided side first so loads stay coalesced along the contiguous one. backward_reduce writes five
    # partial sums per chunk: its channels_last tiles stay 16 positions deep, or those would cost as much traffic
    # as the tile.
    min_block_p = 16 if kernel == "backward_reduce" else 8
    while (
        B * triton.cdiv(C, block_c) * triton.cdiv(P, block_p) < MIN_PROGRAMS_PER_SM * num_sms
        and block_c * block_p > MIN_TILE_ELEMENTS
    ):
        if (channels_last and block_p > min_block_p) or (not channels_last and block_c == 1):
            block_p //= 2
        else:
            block_c //= 2
    c_blocks = triton.cdiv(C, block_c)
    p_tiles = triton.cdiv(P, block_p)
    # backward_reduce keeps the most tiles live (ptxas: ~72 registers a thread at 4 elements each, too many for 8
    # programs of 4 warps per SM): its smallest tiles run on 2 warps, so enough programs fit for 16 KB in flight.
    num_warps = 2 if kernel == "backward_reduce" and block_c * block_p <= MIN_TILE_ELEMENTS else NUM_WARPS
    if kernel in _ELEMENTWISE:
        tiles_per_chunk = 1  # nothing to reduce: one tile per program
    else:
        need = triton.cdiv(TARGET_PROGRAMS_PER_SM * num_sms, B * c_blocks)
        tiles_per_chunk = max(1, p_tiles // need)  # floor: chunks >= need whenever there are that many tiles
    chunks = triton.cdiv(p_tiles, tiles_per_chunk)
    programs = B * c_blocks * chunks
    if programs >= 2**31:
        raise ValueError(f"resnest_fast: {programs} programs exceed the grid limit 2**31 - 1")
    finish_block = FINISH_BLOCK_N
    if kernel == "pool":  # (B, chunks, C) partials -> (B, C) means
        finish_rows, finish_programs = chunks, B * triton.cdiv(C, finish_block)
    elif kernel == "pool_backward":  # (B*chunks, R*C) -> grad_scale, the same for grad_shift
        finish_rows = B * chunks if affine else 0
        finish_programs = triton.cdiv(radix * C, finish_block) if affine else 0
    elif kernel in _ELEMENTWISE:
        finish_rows, finish_programs = 0, 0
    elif kernel == "bn_stats":  # (B*chunks, K) means and squared deviations -> (K,) merged in index order
        finish_rows, finish_programs = B * chunks, triton.cdiv(C, finish_block)
    else:  # d a: (B, chunks, R*C) -> softmax backward per (b, channel block); grad_scale/shift as pool_backward
        # (backward_reduce also sums its pool terms over the chunks: B x cdiv(R*C, FINISH_BLOCK_N) programs each)
        finish_block = min(triton.next_power_of_2(C), max(1, 512 // triton.next_power_of_2(radix)))
        finish_rows, finish_programs = chunks, B * triton.cdiv(C, finish_block)
    return LaunchParams(
        kernel, block_c, block_p, num_warps, c_blocks, chunks, tiles_per_chunk * block_p, programs,
        finish_rows, finish_programs, finish_block,
    )


@dataclass(frozen=True)
class LaunchModel:
    """A model, not a measurement, of one launch (see launch_model)."""

    params: LaunchParams
    num_sms: int
    programs_per_sm: float
    regs_per_thread: int  # estimate; scripts/triton_compile_check.py prints what ptxas allocates
    resident_per_sm: int
    bytes_in_flight_per_program: int
    bytes_in_flight_per_sm: int
    bytes_loaded: int  # main kernel, loads as issued (re-reads that L2 may serve included)
    bytes_moved: int  # main kernel, loads + stores
    finish_bytes_moved: int


# Per kernel: (tiles of x-sized data one program has loaded and not yet consumed in one step of its loop,
# (BLOCK_C, BLOCK_P) tiles live in registers across that step). combine loads its R splits in one unrolled step.
_LOADS_AND_LIVE_TILES = {
    "pool": (lambda r: r, 2),  # R x tiles; acc, v
    "pool_backward": (lambda r: r, 5),  # R x tiles; v, pre, d, d * scale, d * v
    "combine": (lambda r: r, 2),  # R x tiles; out, v
    "combine_backward": (lambda r: 2, 8),  # grad_out, x; g, v, pre, act, d, d a, dscale and dshift partials
    "bn_stats": (lambda r: 1, 3),  # x tile; v, deviations, their squares
    "backward_reduce": (lambda r: 2, 11),  # as combine_backward (no dx) + act', its act'*x, act' sums (vectors)
    "backward_input": (lambda r: r + 1, 5),  # grad_out + R x tiles; g, v, pre, d, dx
}
# Calibrated on ptxas at the stage shapes' tiles, fp32 and bf16, radix 2 (scripts/triton_compile_check.py --quick,
# sm_90): pool 48..69, pool_backward 56..112, combine 48..72, combine_backward 114..168 registers, against the
# estimates 64, 112, 64 and 160 below; backward_reduce 168..212 against 208, backward_input 86..108 against 112,
# bn_stats 48..56 against 80.


def launch_model(
    kernel: str,
    B: int,
    C: int,
    H: int,
    W: int,
    radix: int,
    dtype: torch.dtype,
    channels_last: bool,
    num_sms: int = DEFAULT_NUM_SMS,
    affine: bool = True,
) -> LaunchModel:
    """Programs, bytes in flight per SM and bytes moved of one launch, from launch_params (the launchers' own).

    The model: a program keeps one step of its loop in flight, i.e. loads x elem bytes per program = (tiles it
    loads per step) x BLOCK_C x BLOCK_P x element size (software pipelining across steps would only add). Registers
    per thread ~ 32 + (tiles live per step) x (tile elements / threads) x (accumulator bytes / 4), at most 255.
    Resident programs per SM = min(32 blocks, 64 warps / num_warps, 64K registers / (regs x threads), programs
    spread evenly over the SMs); bytes in flight per SM = resident x bytes per program. Only loads count as in
    flight (stores do not stall a program). Bytes moved count every load and store the kernel issues, partial sums
    included; the finishing passes are reported apart (they read the partials once and write B x C or R x C
    values)."""
    lp = launch_params(kernel, B, C, H, W, radix, dtype, channels_last, num_sms, affine)
    elem = torch.empty((), dtype=dtype).element_size()
    acc = torch.empty((), dtype=accumulation_dtype(dtype)).element_size()
    P, RC = H * W, radix * C
    threads = lp.num_warps * 32
    tile = lp.block_c * lp.block_p
    loads, live = _LOADS_AND_LIVE_TILES[kernel]
    regs = min(255, 32 + live * triton.cdiv(tile, threads) * acc // 4)
    resident = min(
        BLOCKS_PER_SM, WARPS_PER_SM // lp.num_warps, REGS_PER_SM // (regs * threads), triton.cdiv(lp.programs, num_sms)
    )
    in_flight = loads(radix) * tile * elem
    x_bytes, out_bytes = B * RC * P * elem, B * C * P * elem
    n_affine = 2 if affine else 0
    part_bytes = B * lp.chunks * RC * acc  # one (B, chunks, R*C) workspace
    if kernel == "pool":
        loaded, stored = x_bytes, B * lp.chunks * C * acc
        finish = B * lp.chunks * C * acc + B * C * elem
    elif kernel == "pool_backward":
        loaded, stored = x_bytes + B * C * elem, x_bytes + n_affine * part_bytes
        finish = n_affine * (part_bytes + RC * elem)
    elif kernel == "combine":
        loaded, stored = x_bytes + B * RC * elem, out_bytes
        finish = 0
    elif kernel == "combine_backward":
        loaded, stored = x_bytes + radix * out_bytes, x_bytes + (1 + n_affine) * part_bytes
        finish = part_bytes + 2 * B * RC * elem + n_affine * (part_bytes + RC * elem)
    elif kernel == "bn_stats":  # mean and squared deviations per (sample, chunk, channel)
        loaded, stored = x_bytes, 2 * part_bytes
        finish = 2 * part_bytes + 2 * RC * acc
    elif kernel == "backward_reduce":  # d a, grad_scale, grad_shift, act'*x, act' partials
        loaded, stored = x_bytes + radix * out_bytes, 5 * part_bytes
        finish = part_bytes + 2 * B * RC * elem + 2 * (part_bytes + RC * elem) + 2 * (part_bytes + B * RC * acc)
    else:  # backward_input: grad_out once, x, logits, grad_gap; grad_x written
        loaded, stored = x_bytes + out_bytes + B * RC * elem + B * C * elem, x_bytes
        finish = 0
    return LaunchModel(
        lp, num_sms, lp.programs / num_sms, regs, resident, in_flight, resident * in_flight, loaded, loaded + stored,
        finish,
    )


# ---------------------------------------------------------------------------------------------------- launchers

_num_sms_cache: Dict[int, int] = {}
_launch_hook: Optional[Callable] = None


def num_sms(x: Tensor) -> int:
    if not x.is_cuda:
        return DEFAULT_NUM_SMS
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    if index not in _num_sms_cache:
        _num_sms_cache[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _num_sms_cache[index]


def launch(kernel, programs: int, num_warps: int, args: tuple, constexprs: dict) -> None:
    """Every launch goes through here, so record_launches can list them (scripts/triton_compile_check.py)."""
    if _launch_hook is not None:
        _launch_hook(kernel, programs, num_warps, args, constexprs)
    else:
        kernel[(programs,)](*args, num_warps=num_warps, **constexprs)


@contextlib.contextmanager
def record_launches():
    """Within the block the launchers record (kernel, programs, num_warps, args, constexprs) instead of launching;
    with meta tensors they then run anywhere, which lets the compile check list the specialisations they use."""
    global _launch_hook
    launches = []
    previous, _launch_hook = _launch_hook, lambda *launch: launches.append(launch)
    try:
        yield launches
    finally:
        _launch_hook = previous


def on_device(x: Tensor):
    """Triton launches on the current device's current stream: make that x's device (and so its stream)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _acc_dtype(x: Tensor):
    """accumulation_dtype(x.dtype) as the kernels' ACC constexpr."""
    return {torch.float32: tl.float32, torch.float64: tl.float64}[accumulation_dtype(x.dtype)]


def _flat_strides(t: Tensor) -> Tuple[int, int, int]:
    """(stride_b, stride_c, stride_p) of a 4-D tensor dense in NCHW or channels_last: H and W collapse into p."""
    stride_p = t.stride(3) if t.shape[3] > 1 else t.stride(2)
    return t.stride(0), t.stride(1), stride_p


def _prepare(x: Tensor, radix: int):
    fmt = kernel_layout(x)
    xc = x.contiguous(memory_format=fmt)
    return xc, fmt, xc.shape[0], xc.shape[1] // radix


def _params(kernel: str, xc: Tensor, fmt, radix: int, affine: bool) -> LaunchParams:
    B, RC, H, W = xc.shape
    return launch_params(
        kernel, B, RC // radix, H, W, radix, xc.dtype, fmt == torch.channels_last, num_sms(xc), affine
    )


def _param_grads(x: Tensor, scale: Optional[Tensor], shift: Optional[Tensor]):
    """Empty (0,) tensors of x's dtype when there is no affine, like the C++ kernels; else zeros like scale."""
    if scale is None:
        return x.new_empty((0,)), x.new_empty((0,))
    return torch.zeros(scale.shape, dtype=scale.dtype, device=x.device), torch.zeros(
        shift.shape, dtype=shift.dtype, device=x.device
    )


def _finish_param_grads(part: Tensor, scale: Tensor, acc) -> Tuple[Tensor, Tensor]:
    """Stage 2 of grad_scale/grad_shift: part (2, B, chunks, R*C) -> two (R*C,) in scale's dtype, one launch each
    (the two outputs of an op must not share storage)."""
    n = part.shape[-1]
    rows = part.shape[1] * part.shape[2]
    n_blocks = triton.cdiv(n, FINISH_BLOCK_N)
    outs = []
    for i in range(2):
        out = torch.empty((n,), dtype=scale.dtype, device=part.device)
        launch(_sum_rows_kernel, n_blocks, NUM_WARPS, (part[i], out, n, rows, 1, n_blocks),
                dict(ACC=acc, BLOCK_N=FINISH_BLOCK_N))
        outs.append(out)
    return outs[0], outs[1]


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
    xc, fmt, B, C = _prepare(x, radix)
    P = xc.shape[2] * xc.shape[3]
    gap = torch.empty((B, C), dtype=x.dtype, device=x.device)
    if B * C == 0:
        return gap
    if P == 0:
        raise RuntimeError(f"resnest_fast: splat_pool needs H*W > 0, got x of shape {tuple(x.shape)}")
    lp = _params("pool", xc, fmt, radix, scale is not None)
    acc = _acc_dtype(x)
    part = torch.empty((B, lp.chunks, C), dtype=accumulation_dtype(x.dtype), device=x.device)
    with on_device(x):
        launch(
            _pool_partial_kernel, lp.programs, lp.num_warps,
            (xc, scale, shift, part, C, P, lp.c_blocks, lp.chunks, lp.chunk_p, *_flat_strides(xc)),
            dict(RADIX=radix, AFFINE=scale is not None, RELU=relu, ACC=acc, BLOCK_C=lp.block_c, BLOCK_P=lp.block_p),
        )
        n_blocks = triton.cdiv(C, lp.finish_block)
        launch(_sum_rows_kernel, lp.finish_programs, lp.num_warps, (part, gap, C, lp.chunks, P, n_blocks),
                dict(ACC=acc, BLOCK_N=lp.finish_block))
    return gap


def splat_pool_backward(
    grad_gap: Tensor, x: Tensor, scale: Optional[Tensor], shift: Optional[Tensor], radix: int, relu: bool
) -> Tuple[Tensor, Tensor, Tensor]:
    """(grad_x in x's kernel layout, grad_scale, grad_shift); the last two are (0,) when scale is None."""
    check_common(x, scale, shift, radix)
    _check_grad("grad_gap", grad_gap, (x.shape[0], x.shape[1] // radix), x)
    scale, shift = _dense(scale), _dense(shift)
    xc, fmt, B, C = _prepare(x, radix)
    P = xc.shape[2] * xc.shape[3]
    dx = torch.empty(xc.shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    dscale, dshift = _param_grads(x, scale, shift)
    if xc.numel() == 0:
        return dx, dscale, dshift
    affine = scale is not None
    lp = _params("pool_backward", xc, fmt, radix, affine)
    acc = _acc_dtype(x)
    part = torch.empty((2, B, lp.chunks, radix * C), dtype=accumulation_dtype(x.dtype), device=x.device)
    with on_device(x):
        launch(
            _pool_bwd_kernel, lp.programs, lp.num_warps,
            (grad_gap.contiguous(), xc, scale, shift, dx, part[0] if affine else None, part[1] if affine else None,
             C, P, lp.c_blocks, lp.chunks, lp.chunk_p, *_flat_strides(xc), *_flat_strides(dx)),
            dict(RADIX=radix, R_P2=triton.next_power_of_2(radix), AFFINE=affine, RELU=relu, ACC=acc,
                 BLOCK_C=lp.block_c, BLOCK_P=lp.block_p),
        )
        if affine:
            dscale, dshift = _finish_param_grads(part, scale, acc)
    return dx, dscale, dshift


def splat_combine(
    x: Tensor, logits: Tensor, scale: Optional[Tensor], shift: Optional[Tensor], radix: int, groups: int, relu: bool
) -> Tensor:
    """out (B, C, H, W) in x's kernel layout = sum over r of a[b, r, c] * act(x[:, r*C + c])."""
    check_common(x, scale, shift, radix)
    check_logits(x, logits, radix, groups)
    scale, shift, logits = _dense(scale), _dense(shift), _dense(logits)
    xc, fmt, B, C = _prepare(x, radix)
    P = xc.shape[2] * xc.shape[3]
    out = torch.empty((B, C, x.shape[2], x.shape[3]), dtype=x.dtype, device=x.device, memory_format=fmt)
    if out.numel() == 0:
        return out
    lp = _params("combine", xc, fmt, radix, scale is not None)
    with on_device(x):
        launch(
            _combine_fwd_kernel, lp.programs, lp.num_warps,
            (xc, logits, scale, shift, out, C, P, C // groups, lp.c_blocks, lp.chunks,
             *_flat_strides(xc), *_flat_strides(out)),
            dict(RADIX=radix, R_P2=triton.next_power_of_2(radix), AFFINE=scale is not None, RELU=relu,
                 ACC=_acc_dtype(x), BLOCK_C=lp.block_c, BLOCK_P=lp.block_p),
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
    xc, fmt, B, C = _prepare(x, radix)
    P = xc.shape[2] * xc.shape[3]
    go = grad_out.contiguous(memory_format=fmt)
    dx = torch.empty(xc.shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    dscale, dshift = _param_grads(x, scale, shift)
    if xc.numel() == 0:
        return dx, torch.zeros(logits.shape, dtype=logits.dtype, device=logits.device), dscale, dshift
    affine = scale is not None
    lp = _params("combine_backward", xc, fmt, radix, affine)
    acc = _acc_dtype(x)
    r_p2 = triton.next_power_of_2(radix)
    # [0]: d a, [1], [2]: grad_scale and grad_shift partials
    part = torch.empty((3 if affine else 1, B, lp.chunks, radix * C), dtype=accumulation_dtype(x.dtype),
                       device=x.device)
    dlogits = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    with on_device(x):
        launch(
            _combine_bwd_kernel, lp.programs, lp.num_warps,
            (go, xc, logits, scale, shift, dx, part[0], part[1] if affine else None, part[2] if affine else None,
             None, None, C, P, C // groups, lp.c_blocks, lp.chunks, lp.chunk_p,
             *_flat_strides(go), *_flat_strides(xc), *_flat_strides(dx)),
            dict(RADIX=radix, R_P2=r_p2, AFFINE=affine, RELU=relu, ACC=acc, BLOCK_C=lp.block_c, BLOCK_P=lp.block_p,
                 WRITE_DX=True, POOL_SUMS=False),
        )
        launch(
            _combine_bwd_finish_kernel, lp.finish_programs, lp.num_warps,
            (part[0], logits, dlogits, C, C // groups, triton.cdiv(C, lp.finish_block), lp.chunks),
            dict(RADIX=radix, R_P2=r_p2, ACC=acc, BLOCK_C=lp.finish_block),
        )
        if affine:
            dscale, dshift = _finish_param_grads(part[1:], scale, acc)
    return dx, dlogits, dscale, dshift


# ------------------------------------------------------------------------------- training-only: bn0 and backward


def splat_bn_stats(x: Tensor) -> Tuple[Tensor, Tensor]:
    """(var, mean) of x (B, K, H, W) per channel over (B, H, W), biased, in accumulation_dtype(x.dtype)."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a 4-D tensor (B, K, H, W), got {getattr(x, 'shape', type(x).__name__)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be floating point, got {x.dtype}")
    xc, fmt, B, K = _prepare(x, 1)
    P = xc.shape[2] * xc.shape[3]
    acc_t = accumulation_dtype(x.dtype)
    var, mean = (torch.empty((K,), dtype=acc_t, device=x.device) for _ in range(2))
    if K == 0:
        return var, mean
    if B * P == 0:
        raise ValueError(f"splat_bn_stats needs at least one value per channel, got x of shape {tuple(x.shape)}")
    lp = _params("bn_stats", xc, fmt, 1, False)
    acc = _acc_dtype(x)
    part = torch.empty((2, B, lp.chunks, K), dtype=acc_t, device=x.device)  # means, squared deviations
    with on_device(x):
        launch(
            _bn_stats_partial_kernel, lp.programs, lp.num_warps,
            (xc, part[0], part[1], K, P, lp.c_blocks, lp.chunks, lp.chunk_p, *_flat_strides(xc)),
            dict(ACC=acc, BLOCK_C=lp.block_c, BLOCK_P=lp.block_p),
        )
        launch(
            _bn_stats_finish_kernel, lp.finish_programs, lp.num_warps,
            (part[0], part[1], var, mean, K, P, B * lp.chunks, lp.chunks, lp.chunk_p, B * P),
            dict(ACC=acc, BLOCK_N=lp.finish_block),
        )
    return var, mean


def _check_training_args(x, logits, scale, shift, radix, groups, grad_out) -> None:
    """The two fused backward passes: bn0 is always on, so scale and shift are tensors."""
    check_common(x, scale, shift, radix)
    check_logits(x, logits, radix, groups)
    if scale is None:
        raise ValueError("scale and shift must be tensors (bn0 of the fused backward), got None")
    _check_grad("grad_out", grad_out, (x.shape[0], x.shape[1] // radix, x.shape[2], x.shape[3]), x)


def splat_backward_reduce(
    grad_out: Tensor, x: Tensor, logits: Tensor, scale: Tensor, shift: Tensor, radix: int, groups: int
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Pass 1 of the module's fused backward (resnest_fast/ops/splat_backward.py): (grad_logits, the combine's
    grad_scale and grad_shift, mx = sum_p act'(pre)*x and m = sum_p act'(pre) per (B, R*C) in the accumulation
    dtype); one read of x and grad_out, no grad_x."""
    _check_training_args(x, logits, scale, shift, radix, groups, grad_out)
    scale, shift, logits = _dense(scale), _dense(shift), _dense(logits)
    xc, fmt, B, C = _prepare(x, radix)
    P, RC = xc.shape[2] * xc.shape[3], radix * C
    acc_t = accumulation_dtype(x.dtype)
    dlogits = torch.empty(logits.shape, dtype=logits.dtype, device=x.device)
    mx, m = (torch.empty((B, RC), dtype=acc_t, device=x.device) for _ in range(2))
    if xc.numel() == 0:
        dscale, dshift = _param_grads(x, scale, shift)
        return dlogits.zero_(), dscale, dshift, mx.zero_(), m.zero_()
    go = grad_out.contiguous(memory_format=fmt)
    lp = _params("backward_reduce", xc, fmt, radix, True)
    acc = _acc_dtype(x)
    r_p2 = triton.next_power_of_2(radix)
    part = torch.empty((5, B, lp.chunks, RC), dtype=acc_t, device=x.device)  # d a, dscale, dshift, mx, m
    with on_device(x):
        launch(
            _combine_bwd_kernel, lp.programs, lp.num_warps,
            (go, xc, logits, scale, shift, None, *part, C, P, C // groups, lp.c_blocks, lp.chunks, lp.chunk_p,
             *_flat_strides(go), *_flat_strides(xc), 0, 0, 0),
            dict(RADIX=radix, R_P2=r_p2, AFFINE=True, RELU=True, ACC=acc, BLOCK_C=lp.block_c, BLOCK_P=lp.block_p,
                 WRITE_DX=False, POOL_SUMS=True),
        )
        launch(
            _combine_bwd_finish_kernel, lp.finish_programs, lp.num_warps,
            (part[0], logits, dlogits, C, C // groups, triton.cdiv(C, lp.finish_block), lp.chunks),
            dict(RADIX=radix, R_P2=r_p2, ACC=acc, BLOCK_C=lp.finish_block),
        )
        dscale, dshift = _finish_param_grads(part[1:3], scale, acc)
        n_blocks = triton.cdiv(RC, FINISH_BLOCK_N)
        for i, out in ((3, mx), (4, m)):
            launch(_sum_rows_kernel, B * n_blocks, NUM_WARPS, (part[i], out, RC, lp.chunks, 1, n_blocks),
                   dict(ACC=acc, BLOCK_N=FINISH_BLOCK_N))
    return dlogits, dscale, dshift, mx, m


def splat_backward_input(
    grad_out: Tensor, grad_gap: Tensor, x: Tensor, logits: Tensor, scale: Tensor, shift: Tensor, coef_a: Tensor,
    coef_b: Tensor, radix: int, groups: int
) -> Tensor:
    """Pass 2 of the module's fused backward: grad_x (x's kernel layout and dtype) =
    scale*act'(pre)*(grad_out*a + grad_gap/(H*W)) + coef_a*x + coef_b."""
    _check_training_args(x, logits, scale, shift, radix, groups, grad_out)
    if coef_a is None or coef_b is None:
        raise ValueError("coef_a and coef_b must be tensors, got None")
    check_affine(coef_a, coef_b, x.shape[1], x)
    _check_grad("grad_gap", grad_gap, (x.shape[0], x.shape[1] // radix), x)
    scale, shift, logits, coef_a, coef_b = (_dense(t) for t in (scale, shift, logits, coef_a, coef_b))
    xc, fmt, B, C = _prepare(x, radix)
    P = xc.shape[2] * xc.shape[3]
    dx = torch.empty(xc.shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    if xc.numel() == 0:
        return dx
    go = grad_out.contiguous(memory_format=fmt)
    lp = _params("backward_input", xc, fmt, radix, True)
    with on_device(x):
        launch(
            _backward_input_kernel, lp.programs, lp.num_warps,
            (go, grad_gap.contiguous(), xc, logits, scale, shift, coef_a, coef_b, dx, C, P, C // groups,
             lp.c_blocks, lp.chunks, *_flat_strides(go), *_flat_strides(xc), *_flat_strides(dx)),
            dict(RADIX=radix, R_P2=triton.next_power_of_2(radix), ACC=_acc_dtype(x), BLOCK_C=lp.block_c,
                 BLOCK_P=lp.block_p),
        )
    return dx
