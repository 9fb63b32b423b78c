"""Triton kernel of splat_conv_pool: split attention's grouped 3x3 conv with bn0 + ReLU and the pool's partial sums
in its epilogue, so the conv output is written once (as y) and never read back to pool it.

What is fused: for x (B, Cin, H, W) and weight (K, Cin/G, 3, 3), G = radix * groups conv groups (mmseg's
SplitAttentionConv2d), stride 1, padding = dilation, no bias:
    y[b, k, h, w] = relu(conv(x, weight)[b, k, h, w] * scale[k] + shift[k])            (B, K, H, W), K = radix*C
    gap[b, c]     = mean over (h, w) of sum over r of y[b, r*C + c, h, w]               (B, C)
The unfused path is cuDNN's conv (write the conv output), bn0 + relu (read it, write y), splat_pool (read y again).
Here one implicit-GEMM kernel writes y and the per-tile channel sums, and a small kernel adds those sums.

Why it is correct: it is resnest_fast/ops/splat_conv_pool.py's reference, F.conv2d followed by
splat_pool.activate_reference and splat_pool_reference (the oracle of tests/kernels/test_splat_conv_triton.py):
  - implicit GEMM per conv group g: rows = output positions (a BLOCK_H x BLOCK_W rectangle of one sample), columns =
    the group's K/G output channels, reduction over (tap, input channel) = 9 x Cin/G; the input tap (h + (i-1)*d,
    w + (j-1)*d) is loaded with a mask, so padding and dilation read zeros without materialising anything;
  - products accumulate in fp32 (tl.dot's out_dtype) for every input dtype; fp32 inputs use input_precision="ieee"
    (true fp32 FMAs): tf32 keeps 10 mantissa bits, ~1e-3 relative error, which would break the project's rule that
    an fp32 result stays within a small multiple of what fp32 PyTorch itself errs (cuDNN's default fp32 conv does
    use tf32 on Ampere and later: benchmarks/gpu_check.py times it both ways);
  - epilogue in fp32: v = acc * scale + shift, y = relu(v) (where(v < 0, 0, v): NaN passes, like torch.relu), y
    rounded once to x's dtype; the pool sums the fp32 activation before that rounding (so gap is at least as
    accurate as pooling the stored y), rows outside the image zeroed first (relu(shift) need not be 0);
  - the mean has two deterministic stages, no atomics: the program of (b, spatial tile t, group g, channel block)
    writes the sums over its tile of its channels to part[b, t, k], a slot no other program writes; then
    _gap_finish_kernel adds, per (b, c), the rows (t, r) of part viewed (B, tiles * radix, C), in blocks of rows
    summed element-wise in index order and then by one fixed-shape tl.sum, and divides by the int H*W. Same inputs,
    same bits, every run. The radix splits of channel c (k = r*C + c) are in different conv groups (a group's
    K/G = C/groups channels never straddle two splits), so no program's tile holds more than one split of a
    channel: the splits can only be added in the finishing pass, by channel index.
Launch geometry (launch_params, the one function the launcher, launch_model and the launch-model tests of
tests/kernels/test_splat_conv_triton.py call): a flat 1-D grid of (sample, spatial tile, conv group, channel block)
programs, channel block innermost so the programs that share an x tile run together and read it from L2. Tiles start
at the shape a tensor-core GEMM wants (bf16/fp16: 128 positions x 128 channels x 64-deep steps, 8 warps; fp32 FMAs:
64 x 64 x 32, 4 warps; 4 warps for any tile below 128 x 128) and shrink, longer side first, to >= 32 x 32, until the
grid has MIN_PROGRAMS_PER_SM programs per SM (every ResNeSt-101-D8 stage conv at batch 1 reaches it); the reduction
runs as one flat loop over (tap, channel block) with NUM_STAGES-deep software pipelining. The weight is repacked on
every call (pack_weight: 1.2 MB at layer3 in bf16, small next to y; a module would keep it packed). Positions are a
rectangle of power-of-two sides, so (h, w) come from shifts, not divisions; the only integer divisions are per
program or per loop step (scalars). Offsets that can pass 2**31 are int64. The launcher runs on x's device and its
current stream.
Inference only: no backward (resnest_fast/ops/registrations.py registers one that says so).

Launches go through splat.launch, so splat.record_launches lists them and scripts/triton_compile_check.py compiles
them for sm_80 and sm_90 without a GPU.
"""
from dataclasses import dataclass
from typing import Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from resnest_fast.kernels.splat import DEFAULT_NUM_SMS, MIN_PROGRAMS_PER_SM, launch, num_sms, on_device
from resnest_fast.op_rules import check_conv_pool, kernel_layout

__all__ = ["splat_conv_pool", "launch_params", "launch_model", "ConvLaunchParams", "ConvLaunchModel", "DTYPES"]

# The dtypes the kernel runs (tl.dot); the reference serves the others.
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# C_STEPS and N_BLOCKS stay runtime values even where they are 1 (layer1: 32 input and 64 output channels per
# group): specialised to a constant, the 9-step loop got a static trip count and ptxas spilled (255 registers).
@triton.jit(do_not_specialize=["C_STEPS", "N_BLOCKS"])
def _conv_bn_relu_pool_kernel(
    x_ptr,  # (B, Cin, H, W) read through (sxb, sxc, sxh, sxw): any strides, NCHW and channels_last included
    w_ptr,  # (G, 9, CIN_G, K_G) contiguous, x's dtype: the weight packed so a (BLOCK_K, BLOCK_N) tile is rows
    scale_ptr,  # (G * K_G,) x's dtype or float32: bn0 folded
    shift_ptr,  # (G * K_G,) x's dtype or float32
    y_ptr,  # (B, G * K_G, H, W) written through (syb, syc, syh, syw), x's dtype
    part_ptr,  # (B, TILES, G * K_G) contiguous, float32: sum over tile t's positions of relu(conv * scale + shift)
    H,
    W,
    CIN_G,  # input channels per conv group
    K_G,  # output channels per conv group
    G,  # conv groups: radix * cardinality
    TILES_W,
    TILES,
    N_BLOCKS,  # channel blocks per group
    C_STEPS,  # input channel blocks per tap: the reduction has 9 * C_STEPS steps
    DIL,
    sxb,
    sxc,
    sxh,
    sxw,
    syb,
    syc,
    syh,
    syw,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,  # operands to fp32 before tl.dot: only for the interpreter (see upcast_operands)
):
    # program (b, tile, g, channel block), channel block innermost; scalar divisions only.
    pid = tl.program_id(0).to(tl.int64)
    rest = pid // N_BLOCKS
    nb = pid - rest * N_BLOCKS
    rest2 = rest // G
    g = rest - rest2 * G
    b = rest2 // TILES
    t = rest2 - b * TILES
    th = t // TILES_W
    tw = t - th * TILES_W

    BLOCK_M: tl.constexpr = BLOCK_H * BLOCK_W
    offs_m = tl.arange(0, BLOCK_M)
    oh = th * BLOCK_H + offs_m // BLOCK_W  # powers of two: shifts and masks
    ow = tw * BLOCK_W + offs_m % BLOCK_W
    m_mask = (oh < H) & (ow < W)
    offs_k = tl.arange(0, BLOCK_K)
    offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < K_G

    x_g = x_ptr + b * sxb + (g * CIN_G) * sxc
    w_g = w_ptr + g * 9 * CIN_G * K_G
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    # One flat loop over (tap, input channel block), so the compiler pipelines it as a whole, even where a group
    # has a single channel block per tap.
    for step in range(0, 9 * C_STEPS):
        tap = step // C_STEPS
        c0 = (step - tap * C_STEPS) * BLOCK_K
        ki = tap // 3
        ih = oh + (ki - 1) * DIL
        iw = ow + (tap - ki * 3 - 1) * DIL
        in_image = m_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        ck = c0 + offs_k
        c_mask = ck < CIN_G
        a_offs = (ih.to(tl.int64) * sxh + iw.to(tl.int64) * sxw)[:, None] + ck.to(tl.int64)[None, :] * sxc
        a = tl.load(x_g + a_offs, mask=in_image[:, None] & c_mask[None, :], other=0.0)
        w_offs = (tap * CIN_G + ck)[:, None] * K_G + offs_n[None, :]
        wt = tl.load(w_g + w_offs, mask=c_mask[:, None] & n_mask[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            wt = wt.to(tl.float32)
        acc = tl.dot(a, wt, acc, input_precision=INPUT_PRECISION, out_dtype=tl.float32)

    ch = g * K_G + offs_n  # output channel k of the whole conv
    sc = tl.load(scale_ptr + ch, mask=n_mask, other=1.0).to(tl.float32)
    sh = tl.load(shift_ptr + ch, mask=n_mask, other=0.0).to(tl.float32)
    v = acc * sc[None, :] + sh[None, :]
    act = tl.where(v < 0, 0.0, v)
    y_offs = ch.to(tl.int64)[None, :] * syc + (oh.to(tl.int64) * syh + ow.to(tl.int64) * syw)[:, None]
    tl.store(y_ptr + b * syb + y_offs, act.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])
    col = tl.sum(tl.where(m_mask[:, None], act, 0.0), axis=0)
    tl.store(part_ptr + (b * TILES + t) * (G * K_G) + ch, col, mask=n_mask)


@triton.jit
def _gap_finish_kernel(
    part_ptr,  # (B, ROWS, C) contiguous, float32: ROWS = tiles * radix partial sums of channel c (row t*radix + r)
    gap_ptr,  # (B, C) contiguous, x's dtype
    C,
    ROWS,
    P,  # int: positions per sample, the mean's divisor (divided here in fp32)
    C_BLOCKS,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # program (b, channel block): BLOCK_R rows per step, added element-wise in index order, then one tl.sum of a
    # fixed shape: the same order every run. Rows come in blocks (not one by one, as splat's _sum_rows_kernel
    # does) because here there are hundreds per sample (one per spatial tile and split).
    pid = tl.program_id(0).to(tl.int64)
    b = pid // C_BLOCKS
    offs_c = (pid - b * C_BLOCKS) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    base = part_ptr + b * ROWS * C
    acc = tl.zeros((BLOCK_R, BLOCK_C), tl.float32)
    for r0 in range(0, ROWS, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        mask = (rows < ROWS)[:, None] & c_mask[None, :]
        acc += tl.load(base + rows[:, None] * C + offs_c[None, :], mask=mask, other=0.0)
    total = tl.sum(acc, axis=0)
    tl.store(gap_ptr + b * C + offs_c, (total / P).to(gap_ptr.dtype.element_ty), mask=c_mask)


# ----------------------------------------------------------------------------------------------- launch geometry
#
# A heuristic, not triton.autotune, for splat.py's reasons: the partial-sum workspace is sized by the tiling before
# the launch, autotune would time candidates on the first call of every shape, and the interpreter cannot run it.

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps) to start from. Tensor-core dtypes: the tile of Triton's own matmul tutorial
# on sm_80/sm_90. fp32 with ieee precision runs on FMA units, where a thread's share of the accumulator (and of the
# operand fragments) lives in registers: 64 x 64 over 4 warps is 32 accumulators per thread.
TILE = {"tensor_core": (128, 128, 64, 8), "fp32": (64, 64, 32, 4)}
MIN_BLOCK_M, MIN_BLOCK_N = 32, 32  # below this a program is mostly index arithmetic and epilogue
DOT_MIN = 16  # tl.dot needs every tile side >= 16
NUM_STAGES = 3  # shared-memory pipeline depth: 3 x (128x64 + 64x128) x 2 B = 96 KB, within sm_80's 164 KB
FINISH_ELEMENTS = 2048  # (BLOCK_R, BLOCK_C) of the finishing kernel: 16 per thread at 4 warps
FINISH_WARPS = 4


def _pow2_at_most(n: int, cap: int) -> int:
    return min(triton.next_power_of_2(max(1, n)), cap)


@dataclass(frozen=True)
class ConvLaunchParams:
    """How splat_conv_pool is launched: `programs` = B x tiles_h x tiles_w x groups x n_blocks programs, each owning
    a BLOCK_H x BLOCK_W rectangle of one sample's positions and BLOCK_N output channels of one conv group, reducing
    over 9 x c_steps steps of BLOCK_K input channels; then finish_programs programs add finish_rows partials per
    (b, c)."""

    block_h: int
    block_w: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    tiles_h: int
    tiles_w: int
    conv_groups: int
    n_blocks: int
    c_steps: int
    programs: int
    finish_rows: int
    finish_block_r: int
    finish_block_c: int
    finish_programs: int

    @property
    def block_m(self) -> int:
        return self.block_h * self.block_w

    @property
    def tiles(self) -> int:
        return self.tiles_h * self.tiles_w


def launch_params(
    B: int,
    Cin: int,
    K: int,
    H: int,
    W: int,
    radix: int,
    groups: int,
    dtype: torch.dtype,
    channels_last: bool,
    num_sms: int = DEFAULT_NUM_SMS,
) -> ConvLaunchParams:
    """The launch geometry of splat_conv_pool for x (B, Cin, H, W), weight (K, Cin/(radix*groups), 3, 3).

    The tile starts at TILE and halves its longer side (positions on a tie; down to MIN_BLOCK_M positions and
    MIN_BLOCK_N channels: a square tile reads the fewest operand bytes per multiply-add) until B x tiles x
    groups x channel blocks reaches MIN_PROGRAMS_PER_SM x num_sms: at batch 1 a 128-position tile leaves
    layer1-3 of a 512x512 crop with 1-2 programs per SM. Every side is clamped to the tensor (rounded up to a
    power of two, at least DOT_MIN). The rectangle's width is the contiguous side for NCHW (32 positions, 128 B
    in fp32), and 16 for channels_last, where the contiguous side is BLOCK_K and a squarer rectangle re-reads
    less of its halo."""
    G = radix * groups
    cin_g, k_g = Cin // G, K // G
    block_m, block_n, block_k, warps = TILE["fp32" if dtype == torch.float32 else "tensor_core"]
    block_n = max(DOT_MIN, _pow2_at_most(k_g, block_n))
    block_k = max(DOT_MIN, _pow2_at_most(cin_g, block_k))
    block_w = _pow2_at_most(W, min(block_m, 16 if channels_last else 32))
    block_h = _pow2_at_most(H, max(1, block_m // block_w))
    block_h = max(block_h, DOT_MIN // block_w)  # tiny images: pad the rectangle up to tl.dot's minimum

    def programs(bh, bw, bn):
        return B * triton.cdiv(H, bh) * triton.cdiv(W, bw) * G * triton.cdiv(k_g, bn)

    min_m = max(MIN_BLOCK_M, DOT_MIN)
    while programs(block_h, block_w, block_n) < MIN_PROGRAMS_PER_SM * num_sms:
        block_m = block_h * block_w
        if block_m > min_m and (block_m >= block_n or block_n <= MIN_BLOCK_N):
            if block_h > 1:  # keep the rectangle's contiguous width
                block_h //= 2
            else:
                block_w //= 2
        elif block_n > MIN_BLOCK_N:
            block_n //= 2
        else:
            break
    if block_h * block_w * block_n < 128 * 128:
        warps = 4
    tiles_h, tiles_w = triton.cdiv(H, block_h), triton.cdiv(W, block_w)
    n_blocks = triton.cdiv(k_g, block_n)
    total = programs(block_h, block_w, block_n)
    if total >= 2**31:
        raise ValueError(f"resnest_fast: {total} programs exceed the grid limit 2**31 - 1")
    C = K // radix
    rows = tiles_h * tiles_w * radix
    finish_block_c = _pow2_at_most(C, 64)
    finish_block_r = _pow2_at_most(rows, FINISH_ELEMENTS // finish_block_c)
    return ConvLaunchParams(
        block_h, block_w, block_n, block_k, warps, NUM_STAGES, tiles_h, tiles_w, G, n_blocks,
        triton.cdiv(cin_g, block_k), total, rows, finish_block_r, finish_block_c, B * triton.cdiv(C, finish_block_c),
    )


@dataclass(frozen=True)
class ConvLaunchModel:
    """A model, not a measurement, of one launch (see launch_model)."""

    params: ConvLaunchParams
    num_sms: int
    programs_per_sm: float
    shared_bytes: int  # the pipeline's operand buffers per program, at most (ptxas may report less)
    flops: int  # useful multiply-adds x 2 (padding and masked tails excluded)
    tile_flops: int  # multiply-adds the tiles issue x 2 (masked tails included)
    bytes_stored: int  # y and the partial sums
    finish_bytes: int  # the finishing pass: partials read, gap written


def launch_model(
    B: int,
    Cin: int,
    K: int,
    H: int,
    W: int,
    radix: int,
    groups: int,
    dtype: torch.dtype,
    channels_last: bool,
    num_sms: int = DEFAULT_NUM_SMS,
) -> ConvLaunchModel:
    """Programs per SM, shared memory per program, the work the tiles waste on masked tails and the bytes of the
    finishing pass, from launch_params (the launcher's own). shared = NUM_STAGES x (BLOCK_M x BLOCK_K + BLOCK_K x
    BLOCK_N) x element size: what Triton's pipeliner allocates for the two tl.dot operands at most (the compiled fp32
    FMA kernels and some NCHW bf16 ones take less: scripts/triton_compile_check.py prints it)."""
    lp = launch_params(B, Cin, K, H, W, radix, groups, dtype, channels_last, num_sms)
    elem = torch.empty((), dtype=dtype).element_size()
    cin_g = Cin // lp.conv_groups
    shared = lp.num_stages * (lp.block_m * lp.block_k + lp.block_k * lp.block_n) * elem
    flops = 2 * B * H * W * K * cin_g * 9
    tile_flops = 2 * lp.programs * lp.block_m * lp.block_n * lp.c_steps * lp.block_k * 9
    stored = B * K * H * W * elem + B * lp.tiles * K * 4
    finish = B * lp.tiles * K * 4 + B * (K // radix) * elem
    return ConvLaunchModel(lp, num_sms, lp.programs / num_sms, shared, flops, tile_flops, stored, finish)


# ----------------------------------------------------------------------------------------------------- launcher


def pack_weight(weight: Tensor, conv_groups: int) -> Tensor:
    """(K, Cin/G, 3, 3) -> (G, 9, Cin/G, K/G) contiguous: a (channel block, output block) tile of one tap is then
    BLOCK_K rows of BLOCK_N adjacent values, loaded coalesced (the conv weight's own layout strides them by 9)."""
    K, cin_g = weight.shape[:2]
    return weight.reshape(conv_groups, K // conv_groups, cin_g, 9).permute(0, 3, 2, 1).contiguous()


def upcast_operands(x: Tensor) -> bool:
    """Whether the kernel converts its tl.dot operands to fp32 first: for bfloat16 CPU tensors, which only Triton's
    interpreter runs, and whose tl.dot multiplies bfloat16 bit patterns as integers (triton-lang/triton#11584, "not
    supported yet"). Exact: a product of two bfloat16 values fits fp32, and the sum is fp32 either way. Compiled
    kernels (CUDA or meta tensors) never upcast."""
    return x.device.type == "cpu" and x.dtype == torch.bfloat16


def splat_conv_pool(
    x: Tensor, weight: Tensor, scale: Tensor, shift: Tensor, radix: int, groups: int, dilation: int
) -> Tuple[Tensor, Tensor]:
    """(y, gap): y (B, K, H, W) = relu(conv(x, weight) * scale + shift) in x's dtype and kernel_layout(x), gap
    (B, K/radix) = splat_pool of y. x (B, Cin, H, W) fp32/bf16/fp16, any strides; weight (K, Cin/(radix*groups), 3,
    3); conv groups radix*groups, stride 1, padding = dilation."""
    check_conv_pool(x, weight, scale, shift, radix, groups, dilation)
    if x.dtype not in DTYPES:
        raise TypeError(f"resnest_fast: the Triton splat_conv_pool runs {', '.join(map(str, DTYPES))}, got "
                        f"{x.dtype} (the reference runs any dtype)")
    B, Cin, H, W = x.shape
    K = weight.shape[0]
    fmt = kernel_layout(x)
    y = torch.empty((B, K, H, W), dtype=x.dtype, device=x.device, memory_format=fmt)
    gap = torch.empty((B, K // radix), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        if gap.numel():
            raise RuntimeError(f"resnest_fast: splat_conv_pool needs H*W > 0, got x of shape {tuple(x.shape)}")
        return y, gap
    lp = launch_params(B, Cin, K, H, W, radix, groups, x.dtype, fmt == torch.channels_last, num_sms(x))
    G = lp.conv_groups
    packed = pack_weight(weight, G)
    part = torch.empty((B, lp.tiles, K), dtype=torch.float32, device=x.device)
    C = K // radix
    with on_device(x):
        launch(
            _conv_bn_relu_pool_kernel, lp.programs, lp.num_warps,
            (x, packed, scale.contiguous(), shift.contiguous(), y, part, H, W, Cin // G, K // G, G, lp.tiles_w,
             lp.tiles, lp.n_blocks, lp.c_steps, dilation, *x.stride(), *y.stride()),
            dict(BLOCK_H=lp.block_h, BLOCK_W=lp.block_w, BLOCK_N=lp.block_n, BLOCK_K=lp.block_k,
                 INPUT_PRECISION="ieee", UPCAST=upcast_operands(x), num_stages=lp.num_stages),
        )
        launch(
            _gap_finish_kernel, lp.finish_programs, FINISH_WARPS,
            (part, gap, C, lp.finish_rows, H * W, triton.cdiv(C, lp.finish_block_c)),
            dict(BLOCK_R=lp.finish_block_r, BLOCK_C=lp.finish_block_c),
        )
    return y, gap
