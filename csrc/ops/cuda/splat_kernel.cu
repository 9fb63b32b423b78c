// CUDA kernels of the fused split-attention ops: the same seven ops, semantics, output dtypes and layouts as the
// CPU kernels (ops/cpu/splat_kernel.cpp), with every per-element formula taken from ops/splat_math.h.
//
// What is fused, per op:
//   splat_pool:             relu(x*scale + shift), the sum over the radix splits and the spatial mean, in one read
//                           of x: the activated tensor is never written.
//   splat_pool_backward:    dx = g/(H*W) * act'(pre) * scale in one elementwise pass that also accumulates the
//                           per-channel sums giving dscale and dshift.
//   splat_combine:          the attention weights are computed once per (sample, split, channel) into a
//                           (B, R, C) buffer, then one elementwise pass activates x and sums the weighted splits.
//   splat_combine_backward: one pass over x and grad_out writes dx and accumulates, per (sample, split, channel),
//                           d a = sum_p g*act(pre) (and the dscale/dshift sums); a small kernel turns d a into the
//                           logit gradients with splat_attention_backward.
//   splat_bn_stats:         bn0's batch statistics in one read of x: per-channel sums of d = x - k and d^2 (k the
//                           channel's first value, accumulated in double, as on the CPU), then var = E[d^2] - E[d]^2
//                           and mean = k + E[d] (float32 out, float64 for float64 x).
//   splat_backward_reduce:  pass 1 of the module's fused backward (bn0 and ReLU on): one read of x and grad_out gives
//                           the combine's d a (then grad_logits, as in splat_combine_backward), dscale and dshift,
//                           and per (sample, split channel) mx = sum_p act'(pre)*x and m = sum_p act'(pre); no dx.
//   splat_backward_input:   pass 2: dx = scale*act'(pre)*(g*a + grad_gap/(H*W)) + coef_a*x + coef_b written once,
//                           elementwise, with the attention weights precomputed as in splat_combine.
// Why it is correct: each output element uses the formulas of splat_math.h on the same inputs as the CPU kernel,
// and each reduction sums exactly the CPU kernel's terms (in another order, so results differ by rounding only),
// accumulated in at::opmath_type (float for float/half/bfloat16, double for double). The logits are read and their
// gradients written only through splat_attention / splat_logit_index, so the [groups][radix][C/groups] reading is
// the CPU kernel's, while x, its splits and every buffer here are indexed [radix][C]. splat_bn_stats shifts by the
// same value (x[0, ch, 0, 0]) and sums the same terms in double, so it is as free of cancellation as the CPU's.
//
// Work decomposition (x is read in place in either dense layout; the layout rule is splat_layout's):
//   NCHW:          a work item is one (sample, channel), whose radix rows are contiguous runs of H*W values (in
//                  splat_pool_backward, one row); it is reduced by a warp (short items: 7x7 .. 28x28 maps) or by a
//                  whole block (long items, or too few items to fill the GPU otherwise).
//   channels_last: blocks are 2-D tiles of 32 channels x 8 position lanes, so each warp loads 32 contiguous
//                  channels of one position (coalesced); a sample's positions are cut into K runs and every
//                  block writes its per-channel sums to a partial buffer (B*K, R*C).
// No atomics: partial sums are added by later kernels in a fixed order, so results are reproducible run to run on
// a given GPU (K depends on its SM count, as the CPU's split depends on its thread count).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "ops/splat_checks.h"
#include "ops/splat_math.h"

namespace resnest_fast {
namespace {

constexpr int kThreads = 256;  // every kernel; 8 warps, so 8 blocks fill an SM's 2048 threads
constexpr int kWarps = kThreads / 32;
constexpr int kTileCols = 32;  // channels_last tiles: a warp spans 32 consecutive channels ...
constexpr int kTileRows = kThreads / kTileCols;  // ... and each warp walks its own positions


struct Shape {
  int64_t B, R, C, P;  // P = H*W
  RF_HOST_DEVICE int64_t RC() const { return R * C; }
};

Shape shape_of(const at::Tensor& x, int64_t radix) {
  return {x.size(0), radix, x.size(1) / radix, x.size(2) * x.size(3)};
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename acc_t>
constexpr at::ScalarType acc_scalar_type() {
  return std::is_same_v<acc_t, double> ? at::kDouble : at::kFloat;
}

template <typename acc_t>
at::Tensor params_as_acc(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->to(acc_scalar_type<acc_t>()).contiguous() : at::Tensor();
}

template <typename acc_t>
const acc_t* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<acc_t>() : nullptr;
}

template <typename acc_t>
acc_t* mutable_ptr_or_null(at::Tensor& t) {
  return t.defined() ? t.data_ptr<acc_t>() : nullptr;
}

void check_cuda(const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.is_cuda(), "resnest_fast: ", name, " must be a CUDA tensor for the CUDA kernels, got a tensor on ",
              t.device());
}

int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

dim3 grid_of(int64_t blocks) {
  TORCH_CHECK(blocks >= 1 && blocks <= std::numeric_limits<int32_t>::max(),
              "resnest_fast: input too large for one CUDA launch (", blocks, " blocks)");
  return dim3(static_cast<unsigned int>(blocks));
}

// Grid-stride kernels: a few waves of blocks are enough to saturate memory; the loop covers any size.
dim3 elementwise_grid(int64_t n, int sms) {
  return grid_of(std::min<int64_t>(ceil_div(n, kThreads), int64_t(sms) * 64));
}

// NCHW: a warp per item keeps short items (a few hundred values) from idling most of a block; a block per item
// when items are long, or when there are too few of them to give every SM several warps.
bool item_per_block(int64_t items, int64_t elems_per_item, int sms) {
  return elems_per_item >= 2048 || (items < int64_t(32) * sms && elems_per_item >= kThreads);
}

int64_t item_blocks(int64_t items, bool whole_block) { return whole_block ? items : ceil_div(items, kWarps); }

// channels_last: runs per sample, so that B * K * tiles blocks make about two waves, while every position lane
// of a block still gets at least 4 positions (the partial sums stay small next to x).
int64_t position_runs(int64_t B, int64_t tiles, int64_t P, int sms) {
  const int64_t want = ceil_div(int64_t(16) * sms, B * tiles);
  return std::max<int64_t>(1, std::min<int64_t>(want, P / (4 * kTileRows)));
}

// ------------------------------------------------------------------------------------------- device helpers

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// The NCHW item of this thread, its rank t among the item's T threads.
struct ItemThread {
  int64_t item;
  int t, T;
};

__device__ __forceinline__ ItemThread item_thread(bool whole_block) {
  if (whole_block) return {static_cast<int64_t>(blockIdx.x), static_cast<int>(threadIdx.x), kThreads};
  return {static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32, static_cast<int>(threadIdx.x % 32), 32};
}

// Sums each v[n] over the threads of one item; every thread of the item gets the totals. Out-of-range items are
// whole warps that left before any call, so the full-warp shuffles are safe; in block mode items are never out
// of range and every thread reaches the barriers.
template <typename T, int N>
__device__ __forceinline__ void item_sum(T (&v)[N], bool whole_block, T (&smem)[N][kWarps]) {
#pragma unroll
  for (int n = 0; n < N; ++n) v[n] = warp_sum(v[n]);
  if (!whole_block) return;
  const int warp = threadIdx.x / 32;
  if (threadIdx.x % 32 == 0) {
#pragma unroll
    for (int n = 0; n < N; ++n) smem[n][warp] = v[n];
  }
  __syncthreads();
#pragma unroll
  for (int n = 0; n < N; ++n) {
    T s = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) s += smem[n][w];
    v[n] = s;
  }
  __syncthreads();  // smem is reused by the next call
}

// The channels_last tile of this thread: blockIdx.x = (b*K + k) * tiles + tile, so neighbouring blocks read
// neighbouring channels of the same positions.
struct TileThread {
  int64_t item;     // b*K + k: the row of the partial buffers
  int64_t b;
  int64_t ch;       // may be past the last channel in the last tile
  int64_t p_begin;  // positions p_begin, p_begin + kTileRows, ... < p_end
  int64_t p_end;
  int ty;
};

__device__ __forceinline__ TileThread tile_thread(int64_t K, int64_t tiles, int64_t P) {
  const int64_t block = blockIdx.x;
  const int64_t tile = block % tiles, item = block / tiles;
  const int64_t k = item % K;
  const int64_t run = (P + K - 1) / K;
  const int tx = static_cast<int>(threadIdx.x % kTileCols), ty = static_cast<int>(threadIdx.x / kTileCols);
  const int64_t end = (k + 1) * run;
  return {item, item / K, tile * kTileCols + tx, k * run + ty, end < P ? end : P, ty};
}

// Sums each v[n] over the kTileRows threads of the block that share a column; the totals are valid in row 0.
// Every thread of the block must call it, once.
template <typename T, int N>
__device__ __forceinline__ void tile_rows_sum(T (&v)[N], T (&smem)[N][kTileRows][kTileCols]) {
  const int tx = threadIdx.x % kTileCols, ty = threadIdx.x / kTileCols;
#pragma unroll
  for (int n = 0; n < N; ++n) smem[n][ty][tx] = v[n];
  __syncthreads();
  if (ty == 0) {
#pragma unroll
    for (int n = 0; n < N; ++n) {
      T s = 0;
#pragma unroll
      for (int y = 0; y < kTileRows; ++y) s += smem[n][y][tx];
      v[n] = s;
    }
  }
}

template <typename acc_t, bool kAffine>
__device__ __forceinline__ void load_params(const acc_t* __restrict__ scale, const acc_t* __restrict__ shift,
                                            int64_t ch, acc_t& sc, acc_t& sh) {
  sc = kAffine ? scale[ch] : acc_t(1);
  sh = kAffine ? shift[ch] : acc_t(0);
}

// -------------------------------------------------------------------------------------------------- kernels

// out[batch, j] = factor * sum over i < items of part[batch*items + i, j], in a fixed order. One block per
// (batch, 32 columns): the 8 warps stride over items, then their sums are added.
template <typename acc_t, typename out_t>
__global__ void __launch_bounds__(kThreads)
    column_sum_kernel(const acc_t* __restrict__ part, out_t* __restrict__ out, int64_t items, int64_t n,
                      acc_t factor) {
  __shared__ acc_t smem[1][kTileRows][kTileCols];
  const int64_t tiles = (n + kTileCols - 1) / kTileCols;
  const int64_t batch = blockIdx.x / tiles;
  const int tx = threadIdx.x % kTileCols, ty = threadIdx.x / kTileCols;
  const int64_t j = (blockIdx.x % tiles) * kTileCols + tx;
  acc_t sum[1] = {acc_t(0)};
  if (j < n) {
    const acc_t* col = part + batch * items * n + j;
    for (int64_t i = ty; i < items; i += kTileRows) sum[0] += col[i * n];
  }
  tile_rows_sum(sum, smem);
  if (ty == 0 && j < n) out[batch * n + j] = static_cast<out_t>(sum[0] * factor);
}

// att[b, r, c] (acc_t) from the logit row of sample b, read as [groups][radix][C/groups].
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    attention_kernel(const scalar_t* __restrict__ logits, acc_t* __restrict__ att, Shape s, int64_t cpg) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t bc = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; bc < s.B * s.C; bc += stride) {
    const int64_t b = bc / s.C, c = bc % s.C;
    acc_t a[kMaxRadix];
    splat_attention<acc_t>(logits + b * s.RC(), c, s.R, cpg, a);
    for (int64_t r = 0; r < s.R; ++r) att[(b * s.R + r) * s.C + c] = a[r];
  }
}

// dlogits of sample b, channel c: d a[r] is the sum of the K partial rows of the sample, then
// splat_attention_backward; written to the [groups][radix][C/groups] positions. Every logit is written once.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    attention_backward_kernel(const acc_t* __restrict__ att, const acc_t* __restrict__ da_part,
                              scalar_t* __restrict__ dlogits, Shape s, int64_t K, int64_t cpg) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t bc = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; bc < s.B * s.C; bc += stride) {
    const int64_t b = bc / s.C, c = bc % s.C;
    acc_t a[kMaxRadix], da[kMaxRadix], dl[kMaxRadix];
    for (int64_t r = 0; r < s.R; ++r) {
      a[r] = att[(b * s.R + r) * s.C + c];
      const acc_t* col = da_part + b * K * s.RC() + r * s.C + c;
      acc_t sum = 0;
      for (int64_t k = 0; k < K; ++k) sum += col[k * s.RC()];
      da[r] = sum;
    }
    splat_attention_backward<acc_t>(a, da, s.R, dl);
    for (int64_t r = 0; r < s.R; ++r)
      dlogits[b * s.RC() + splat_logit_index(r, c, s.R, cpg)] = static_cast<scalar_t>(dl[r]);
  }
}

// ------------------------------------------------------------------------------------------------ pool forward

// NCHW: item (b, c) reduces its R rows x[b, r*C + c, :] into gap[b, c].
template <typename scalar_t, typename acc_t, bool kAffine, bool kRelu>
__global__ void __launch_bounds__(kThreads)
    pool_nchw_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ scale,
                     const acc_t* __restrict__ shift, scalar_t* __restrict__ gap, Shape s, bool whole_block) {
  __shared__ acc_t smem[1][kWarps];
  const ItemThread it = item_thread(whole_block);
  if (it.item >= s.B * s.C) return;
  const int64_t b = it.item / s.C, c = it.item % s.C;
  acc_t sum[1] = {acc_t(0)};
  for (int64_t r = 0; r < s.R; ++r) {
    const int64_t ch = r * s.C + c;
    const scalar_t* row = x + (b * s.RC() + ch) * s.P;
    acc_t sc, sh;
    load_params<acc_t, kAffine>(scale, shift, ch, sc, sh);
#pragma unroll 4
    for (int64_t i = it.t; i < s.P; i += it.T)
      sum[0] += splat_act<acc_t, kRelu>(splat_pre<acc_t, kAffine>(static_cast<acc_t>(row[i]), sc, sh));
  }
  item_sum(sum, whole_block, smem);
  if (it.t == 0) gap[it.item] = static_cast<scalar_t>(sum[0] * (acc_t(1) / static_cast<acc_t>(s.P)));
}

// channels_last: tile (b, run k, channels ch of R*C) sums act(x[b, p, ch]) over its positions into
// partial[b*K + k, ch]. Read as (B, K*R, C), that buffer is summed over its middle axis by column_sum_kernel, which
// adds the runs and the radix splits of each channel at once.
template <typename scalar_t, typename acc_t, bool kAffine, bool kRelu>
__global__ void __launch_bounds__(kThreads)
    pool_cl_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ scale, const acc_t* __restrict__ shift,
                   acc_t* __restrict__ partial, Shape s, int64_t K) {
  __shared__ acc_t smem[1][kTileRows][kTileCols];
  const TileThread tt = tile_thread(K, (s.RC() + kTileCols - 1) / kTileCols, s.P);
  const int64_t ch = tt.ch;
  acc_t sum[1] = {acc_t(0)};
  if (ch < s.RC()) {
    acc_t sc, sh;
    load_params<acc_t, kAffine>(scale, shift, ch, sc, sh);
    const int64_t step = int64_t(kTileRows) * s.RC();
    int64_t off = (tt.b * s.P + tt.p_begin) * s.RC() + ch;
#pragma unroll 4
    for (int64_t p = tt.p_begin; p < tt.p_end; p += kTileRows, off += step)
      sum[0] += splat_act<acc_t, kRelu>(splat_pre<acc_t, kAffine>(static_cast<acc_t>(x[off]), sc, sh));
  }
  tile_rows_sum(sum, smem);
  if (tt.ty == 0 && ch < s.RC()) partial[tt.item * s.RC() + ch] = sum[0];
}

// ----------------------------------------------------------------------------------------------- pool backward
// d gap[b, c] / d act(x[b, r*C + c, p]) = 1/P for every r and p.

// NCHW: item (b, ch) is one row of x; dscale/dshift sums go to part[b, ch].
template <typename scalar_t, typename acc_t, bool kAffine, bool kRelu>
__global__ void __launch_bounds__(kThreads)
    pool_backward_nchw_kernel(const scalar_t* __restrict__ grad_gap, const scalar_t* __restrict__ x,
                              const acc_t* __restrict__ scale, const acc_t* __restrict__ shift,
                              scalar_t* __restrict__ dx, acc_t* __restrict__ dscale_part,
                              acc_t* __restrict__ dshift_part, Shape s, bool whole_block) {
  __shared__ acc_t smem[2][kWarps];
  const ItemThread it = item_thread(whole_block);
  if (it.item >= s.B * s.RC()) return;
  const int64_t b = it.item / s.RC(), ch = it.item % s.RC();
  const acc_t g = static_cast<acc_t>(grad_gap[b * s.C + ch % s.C]) * (acc_t(1) / static_cast<acc_t>(s.P));
  acc_t sc, sh;
  load_params<acc_t, kAffine>(scale, shift, ch, sc, sh);
  const scalar_t* row = x + it.item * s.P;
  scalar_t* drow = dx + it.item * s.P;
  acc_t sums[2] = {acc_t(0), acc_t(0)};  // dscale, dshift
#pragma unroll 4
  for (int64_t i = it.t; i < s.P; i += it.T) {
    const acc_t v = static_cast<acc_t>(row[i]);
    const acc_t d = g * splat_act_grad<acc_t, kRelu>(splat_pre<acc_t, kAffine>(v, sc, sh));
    drow[i] = static_cast<scalar_t>(kAffine ? d * sc : d);
    if constexpr (kAffine) {
      sums[0] += d * v;
      sums[1] += d;
    }
  }
  if constexpr (kAffine) {
    item_sum(sums, whole_block, smem);
    if (it.t == 0) {
      dscale_part[it.item] = sums[0];
      dshift_part[it.item] = sums[1];
    }
  }
}

// channels_last: tile (b, run k, channels ch of R*C); dscale/dshift sums go to part[b*K + k, ch].
template <typename scalar_t, typename acc_t, bool kAffine, bool kRelu>
__global__ void __launch_bounds__(kThreads)
    pool_backward_cl_kernel(const scalar_t* __restrict__ grad_gap, const scalar_t* __restrict__ x,
                            const acc_t* __restrict__ scale, const acc_t* __restrict__ shift,
                            scalar_t* __restrict__ dx, acc_t* __restrict__ dscale_part,
                            acc_t* __restrict__ dshift_part, Shape s, int64_t K) {
  __shared__ acc_t smem[2][kTileRows][kTileCols];
  const TileThread tt = tile_thread(K, (s.RC() + kTileCols - 1) / kTileCols, s.P);
  const int64_t ch = tt.ch;
  acc_t sums[2] = {acc_t(0), acc_t(0)};  // dscale, dshift
  if (ch < s.RC()) {
    const acc_t g = static_cast<acc_t>(grad_gap[tt.b * s.C + ch % s.C]) * (acc_t(1) / static_cast<acc_t>(s.P));
    acc_t sc, sh;
    load_params<acc_t, kAffine>(scale, shift, ch, sc, sh);
    const int64_t step = int64_t(kTileRows) * s.RC();
    int64_t off = (tt.b * s.P + tt.p_begin) * s.RC() + ch;
#pragma unroll 4
    for (int64_t p = tt.p_begin; p < tt.p_end; p += kTileRows, off += step) {
      const acc_t v = static_cast<acc_t>(x[off]);
      const acc_t d = g * splat_act_grad<acc_t, kRelu>(splat_pre<acc_t, kAffine>(v, sc, sh));
      dx[off] = static_cast<scalar_t>(kAffine ? d * sc : d);
      if constexpr (kAffine) {
        sums[0] += d * v;
        sums[1] += d;
      }
    }
  }
  if constexpr (kAffine) {
    tile_rows_sum(sums, smem);
    if (tt.ty == 0 && ch < s.RC()) {
      dscale_part[tt.item * s.RC() + ch] = sums[0];
      dshift_part[tt.item * s.RC() + ch] = sums[1];
    }
  }
}

// --------------------------------------------------------------------------------------------- combine forward

// One output element per iteration: out[b, c, p] = sum_r att[b, r, c] * act(x[b, r*C + c, p]). index_t is int32
// when every offset of x fits, which makes the index divisions cheap.
template <typename scalar_t, typename acc_t, typename index_t, bool kAffine, bool kRelu>
__global__ void __launch_bounds__(kThreads)
    combine_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ att, const acc_t* __restrict__ scale,
                   const acc_t* __restrict__ shift, scalar_t* __restrict__ out, index_t R, index_t C, index_t P,
                   int64_t n, bool channels_last) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const index_t idx = static_cast<index_t>(i);
    index_t b, c, base, split_stride;  // x[b, r*C + c, p] sits at base + r*split_stride
    if (channels_last) {  // idx = (b*P + p)*C + c
      c = idx % C;
      const index_t bp = idx / C;
      b = bp / P;
      base = bp * (R * C) + c;
      split_stride = C;
    } else {  // idx = (b*C + c)*P + p
      const index_t bc = idx / P;
      b = bc / C;
      c = bc - b * C;
      base = (b * R * C + c) * P + (idx - bc * P);
      split_stride = C * P;
    }
    const acc_t* a = att + b * R * C + c;  // att[b, r, c] = a[r*C]
    acc_t sum = 0;
#pragma unroll
    for (int r = 0; r < kMaxRadix; ++r) {
      if (r < R) {
        acc_t sc, sh;
        load_params<acc_t, kAffine>(scale, shift, r * C + c, sc, sh);
        sum += a[r * C] * splat_act<acc_t, kRelu>(
                              splat_pre<acc_t, kAffine>(static_cast<acc_t>(x[base + r * split_stride]), sc, sh));
      }
    }
    out[idx] = static_cast<scalar_t>(sum);
  }
}

// -------------------------------------------------------------------------------------------- combine backward
// For x[b, r*C + c, p]: pre = x*scale + shift, d a[b, r, c] += g * act(pre), d = g * a * act'(pre),
// dx = d * scale, dscale += d * x, dshift += d, with g = grad_out[b, c, p].

// NCHW: item (b, c); its R rows are handled one after the other, so the item's grad_out row is re-read from
// cache. Sums go to part[b, r*C + c].
template <typename scalar_t, typename acc_t, bool kAffine, bool kRelu>
__global__ void __launch_bounds__(kThreads)
    combine_backward_nchw_kernel(const scalar_t* __restrict__ gout, const scalar_t* __restrict__ x,
                                 const acc_t* __restrict__ att, const acc_t* __restrict__ scale,
                                 const acc_t* __restrict__ shift, scalar_t* __restrict__ dx,
                                 acc_t* __restrict__ da_part, acc_t* __restrict__ dscale_part,
                                 acc_t* __restrict__ dshift_part, Shape s, bool whole_block) {
  constexpr int N = kAffine ? 3 : 1;  // d a, then dscale and dshift
  __shared__ acc_t smem[N][kWarps];
  const ItemThread it = item_thread(whole_block);
  if (it.item >= s.B * s.C) return;
  const int64_t b = it.item / s.C, c = it.item % s.C;
  const scalar_t* grow = gout + it.item * s.P;
  for (int64_t r = 0; r < s.R; ++r) {
    const int64_t ch = r * s.C + c;
    const int64_t row_index = b * s.RC() + ch;  // also the index of att[b, r, c]
    const scalar_t* row = x + row_index * s.P;
    scalar_t* drow = dx + row_index * s.P;
    const acc_t a = att[row_index];
    acc_t sc, sh;
    load_params<acc_t, kAffine>(scale, shift, ch, sc, sh);
    acc_t sums[N];
#pragma unroll
    for (int n = 0; n < N; ++n) sums[n] = 0;
#pragma unroll 4
    for (int64_t i = it.t; i < s.P; i += it.T) {
      const acc_t v = static_cast<acc_t>(row[i]);
      const acc_t g = static_cast<acc_t>(grow[i]);
      const acc_t pre = splat_pre<acc_t, kAffine>(v, sc, sh);
      sums[0] += g * splat_act<acc_t, kRelu>(pre);
      const acc_t d = g * a * splat_act_grad<acc_t, kRelu>(pre);
      drow[i] = static_cast<scalar_t>(kAffine ? d * sc : d);
      if constexpr (kAffine) {
        sums[1] += d * v;
        sums[2] += d;
      }
    }
    item_sum(sums, whole_block, smem);
    if (it.t == 0) {
      da_part[row_index] = sums[0];
      if constexpr (kAffine) {
        dscale_part[row_index] = sums[1];
        dshift_part[row_index] = sums[2];
      }
    }
  }
}

// channels_last: tile (b, run k, channels ch of R*C); sums go to part[b*K + k, ch].
template <typename scalar_t, typename acc_t, bool kAffine, bool kRelu>
__global__ void __launch_bounds__(kThreads)
    combine_backward_cl_kernel(const scalar_t* __restrict__ gout, const scalar_t* __restrict__ x,
                               const acc_t* __restrict__ att, const acc_t* __restrict__ scale,
                               const acc_t* __restrict__ shift, scalar_t* __restrict__ dx,
                               acc_t* __restrict__ da_part, acc_t* __restrict__ dscale_part,
                               acc_t* __restrict__ dshift_part, Shape s, int64_t K) {
  constexpr int N = kAffine ? 3 : 1;  // d a, then dscale and dshift
  __shared__ acc_t smem[N][kTileRows][kTileCols];
  const TileThread tt = tile_thread(K, (s.RC() + kTileCols - 1) / kTileCols, s.P);
  const int64_t ch = tt.ch;
  acc_t sums[N];
#pragma unroll
  for (int n = 0; n < N; ++n) sums[n] = 0;
  if (ch < s.RC()) {
    const int64_t c = ch % s.C;
    const acc_t a = att[tt.b * s.RC() + ch];  // att[b, r, c] with ch = r*C + c
    acc_t sc, sh;
    load_params<acc_t, kAffine>(scale, shift, ch, sc, sh);
    int64_t pos = tt.b * s.P + tt.p_begin;  // b*P + p
#pragma unroll 4
    for (int64_t p = tt.p_begin; p < tt.p_end; p += kTileRows, pos += kTileRows) {
      const int64_t off = pos * s.RC() + ch;
      const acc_t v = static_cast<acc_t>(x[off]);
      const acc_t g = static_cast<acc_t>(gout[pos * s.C + c]);
      const acc_t pre = splat_pre<acc_t, kAffine>(v, sc, sh);
      sums[0] += g * splat_act<acc_t, kRelu>(pre);
      const acc_t d = g * a * splat_act_grad<acc_t, kRelu>(pre);
      dx[off] = static_cast<scalar_t>(kAffine ? d * sc : d);
      if constexpr (kAffine) {
        sums[1] += d * v;
        sums[2] += d;
      }
    }
  }
  tile_rows_sum(sums, smem);
  if (tt.ty == 0 && ch < s.RC()) {
    da_part[tt.item * s.RC() + ch] = sums[0];
    if constexpr (kAffine) {
      dscale_part[tt.item * s.RC() + ch] = sums[1];
      dshift_part[tt.item * s.RC() + ch] = sums[2];
    }
  }
}

// --------------------------------------------------------------------------------------------- batch statistics
// Sums over (B, H, W) of d = x - k and d^2 per channel, k the channel's first value x[0, ch, 0, 0]; accumulated in
// double as the CPU kernel does (shifting by a value of the data keeps E[d^2] - E[d]^2 free of the cancellation
// of E[x^2] - E[x]^2 when |mean| >> std; double keeps the long sums exact enough whatever the count). The op is
// memory bound on GPUs with full-rate double; bn_stats_finalize_kernel turns the sums into var and mean.

// NCHW: item (b, ch) is one row of x (Shape with R = 1, C = channels); its sums go to part[b*C + ch].
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    bn_stats_nchw_kernel(const scalar_t* __restrict__ x, double* __restrict__ s1_part, double* __restrict__ s2_part,
                         Shape s, bool whole_block) {
  __shared__ double smem[2][kWarps];
  const ItemThread it = item_thread(whole_block);
  if (it.item >= s.B * s.C) return;
  const int64_t ch = it.item % s.C;
  const double k = static_cast<double>(x[ch * s.P]);
  const scalar_t* row = x + it.item * s.P;
  double sums[2] = {0.0, 0.0};
#pragma unroll 4
  for (int64_t i = it.t; i < s.P; i += it.T) {
    const double d = static_cast<double>(row[i]) - k;
    sums[0] += d;
    sums[1] += d * d;
  }
  item_sum(sums, whole_block, smem);
  if (it.t == 0) {
    s1_part[it.item] = sums[0];
    s2_part[it.item] = sums[1];
  }
}

// channels_last: tile (b, run k, channels ch); sums go to part[b*K + k, ch].
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    bn_stats_cl_kernel(const scalar_t* __restrict__ x, double* __restrict__ s1_part, double* __restrict__ s2_part,
                       Shape s, int64_t K) {
  __shared__ double smem[2][kTileRows][kTileCols];
  const TileThread tt = tile_thread(K, (s.C + kTileCols - 1) / kTileCols, s.P);
  const int64_t ch = tt.ch;
  double sums[2] = {0.0, 0.0};
  if (ch < s.C) {
    const double k = static_cast<double>(x[ch]);
    const int64_t step = int64_t(kTileRows) * s.C;
    int64_t off = (tt.b * s.P + tt.p_begin) * s.C + ch;
#pragma unroll 4
    for (int64_t p = tt.p_begin; p < tt.p_end; p += kTileRows, off += step) {
      const double d = static_cast<double>(x[off]) - k;
      sums[0] += d;
      sums[1] += d * d;
    }
  }
  tile_rows_sum(sums, smem);
  if (tt.ty == 0 && ch < s.C) {
    s1_part[tt.item * s.C + ch] = sums[0];
    s2_part[tt.item * s.C + ch] = sums[1];
  }
}

// var[ch], mean[ch] from the partial sums (items, C), added in a fixed order; shift_stride is the offset of
// x[0, 1, 0, 0] (H*W for NCHW, 1 for channels_last), n = B*H*W.
template <typename scalar_t, typename out_t>
__global__ void __launch_bounds__(kThreads)
    bn_stats_finalize_kernel(const scalar_t* __restrict__ x, const double* __restrict__ s1_part,
                             const double* __restrict__ s2_part, out_t* __restrict__ var, out_t* __restrict__ mean,
                             int64_t items, int64_t C, int64_t shift_stride, double n) {
  __shared__ double smem[2][kTileRows][kTileCols];
  const int tx = threadIdx.x % kTileCols, ty = threadIdx.x / kTileCols;
  const int64_t ch = static_cast<int64_t>(blockIdx.x) * kTileCols + tx;
  double sums[2] = {0.0, 0.0};
  if (ch < C) {
    for (int64_t i = ty; i < items; i += kTileRows) {
      sums[0] += s1_part[i * C + ch];
      sums[1] += s2_part[i * C + ch];
    }
  }
  tile_rows_sum(sums, smem);
  if (ty == 0 && ch < C) {
    const double m = sums[0] / n;
    const double v = sums[1] / n - m * m;
    var[ch] = static_cast<out_t>(v > 0.0 ? v : 0.0);
    mean[ch] = static_cast<out_t>(static_cast<double>(x[ch * shift_stride]) + m);
  }
}

// ------------------------------------------------------------------------- fused module backward (two passes)
// bn0 and ReLU are always on here (kAffine = kRelu = true). Pass 1 (splat_backward_reduce), for x[b, r*C + c, p]
// with g = grad_out[b, c, p], pre = x*scale + shift, mk = act'(pre): the combine's d a += g*act(pre),
// dscale += g*a*mk*x, dshift += g*a*mk, and the pool's per-(sample, split channel) mx += mk*x, m += mk. These are
// the combine backward's sums plus two more, so one read of x and grad_out gives every reduction of the module's
// backward; pass 2 (splat_backward_input) then writes dx once, elementwise.

// NCHW: item (b, c), its R rows one after the other; sums go to part[b, r*C + c] (mx, m: straight to the outputs).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    backward_reduce_nchw_kernel(const scalar_t* __restrict__ gout, const scalar_t* __restrict__ x,
                                const acc_t* __restrict__ att, const acc_t* __restrict__ scale,
                                const acc_t* __restrict__ shift, acc_t* __restrict__ da_part,
                                acc_t* __restrict__ dscale_part, acc_t* __restrict__ dshift_part,
                                acc_t* __restrict__ mx_part, acc_t* __restrict__ m_part, Shape s, bool whole_block) {
  __shared__ acc_t smem[5][kWarps];
  const ItemThread it = item_thread(whole_block);
  if (it.item >= s.B * s.C) return;
  const int64_t b = it.item / s.C, c = it.item % s.C;
  const scalar_t* grow = gout + it.item * s.P;
  for (int64_t r = 0; r < s.R; ++r) {
    const int64_t ch = r * s.C + c;
    const int64_t row_index = b * s.RC() + ch;  // also the index of att[b, r, c]
    const scalar_t* row = x + row_index * s.P;
    const acc_t a = att[row_index], sc = scale[ch], sh = shift[ch];
    acc_t sums[5] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0), acc_t(0)};  // d a, dscale, dshift, mx, m
#pragma unroll 4
    for (int64_t i = it.t; i < s.P; i += it.T) {
      const acc_t v = static_cast<acc_t>(row[i]);
      const acc_t g = static_cast<acc_t>(grow[i]);
      const acc_t pre = splat_pre<acc_t, true>(v, sc, sh);
      const acc_t mk = splat_act_grad<acc_t, true>(pre);
      sums[0] += g * splat_act<acc_t, true>(pre);
      const acc_t d = g * a * mk;
      sums[1] += d * v;
      sums[2] += d;
      sums[3] += mk * v;
      sums[4] += mk;
    }
    item_sum(sums, whole_block, smem);
    if (it.t == 0) {
      da_part[row_index] = sums[0];
      dscale_part[row_index] = sums[1];
      dshift_part[row_index] = sums[2];
      mx_part[row_index] = sums[3];
      m_part[row_index] = sums[4];
    }
  }
}

// channels_last: tile (b, run k, channels ch of R*C); sums go to part[b*K + k, ch].
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    backward_reduce_cl_kernel(const scalar_t* __restrict__ gout, const scalar_t* __restrict__ x,
                              const acc_t* __restrict__ att, const acc_t* __restrict__ scale,
                              const acc_t* __restrict__ shift, acc_t* __restrict__ da_part,
                              acc_t* __restrict__ dscale_part, acc_t* __restrict__ dshift_part,
                              acc_t* __restrict__ mx_part, acc_t* __restrict__ m_part, Shape s, int64_t K) {
  __shared__ acc_t smem[5][kTileRows][kTileCols];
  const TileThread tt = tile_thread(K, (s.RC() + kTileCols - 1) / kTileCols, s.P);
  const int64_t ch = tt.ch;
  acc_t sums[5] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0), acc_t(0)};  // d a, dscale, dshift, mx, m
  if (ch < s.RC()) {
    const int64_t c = ch % s.C;
    const acc_t a = att[tt.b * s.RC() + ch], sc = scale[ch], sh = shift[ch];
    int64_t pos = tt.b * s.P + tt.p_begin;  // b*P + p
#pragma unroll 4
    for (int64_t p = tt.p_begin; p < tt.p_end; p += kTileRows, pos += kTileRows) {
      const acc_t v = static_cast<acc_t>(x[pos * s.RC() + ch]);
      const acc_t g = static_cast<acc_t>(gout[pos * s.C + c]);
      const acc_t pre = splat_pre<acc_t, true>(v, sc, sh);
      const acc_t mk = splat_act_grad<acc_t, true>(pre);
      sums[0] += g * splat_act<acc_t, true>(pre);
      const acc_t d = g * a * mk;
      sums[1] += d * v;
      sums[2] += d;
      sums[3] += mk * v;
      sums[4] += mk;
    }
  }
  tile_rows_sum(sums, smem);
  if (tt.ty == 0 && ch < s.RC()) {
    const int64_t o = tt.item * s.RC() + ch;
    da_part[o] = sums[0];
    dscale_part[o] = sums[1];
    dshift_part[o] = sums[2];
    mx_part[o] = sums[3];
    m_part[o] = sums[4];
  }
}

// Pass 2, one element of x per iteration: dx = scale*mk*(g*a + gg[b, c]) + coef_a*x + coef_b, with
// gg = grad_gap/(H*W) (B, C) and g = grad_out[b, c, p]. index_t as in combine_kernel.
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    backward_input_kernel(const scalar_t* __restrict__ gout, const acc_t* __restrict__ gg,
                          const scalar_t* __restrict__ x, const acc_t* __restrict__ att,
                          const acc_t* __restrict__ scale, const acc_t* __restrict__ shift,
                          const acc_t* __restrict__ coef_a, const acc_t* __restrict__ coef_b,
                          scalar_t* __restrict__ dx, index_t RC, index_t C, index_t P, int64_t n,
                          bool channels_last) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const index_t idx = static_cast<index_t>(i);
    index_t b, ch, g_off;
    if (channels_last) {  // idx = (b*P + p)*RC + ch
      ch = idx % RC;
      const index_t bp = idx / RC;
      b = bp / P;
      g_off = bp * C + ch % C;
    } else {  // idx = (b*RC + ch)*P + p
      const index_t bch = idx / P;
      b = bch / RC;
      ch = bch - b * RC;
      g_off = (b * C + ch % C) * P + (idx - bch * P);
    }
    const acc_t v = static_cast<acc_t>(x[idx]);
    const acc_t sc = scale[ch];
    const acc_t mk = splat_act_grad<acc_t, true>(splat_pre<acc_t, true>(v, sc, shift[ch]));
    const acc_t g = static_cast<acc_t>(gout[g_off]);
    dx[idx] = static_cast<scalar_t>(sc * mk * (g * att[b * RC + ch] + gg[b * C + ch % C]) + coef_a[ch] * v +
                                    coef_b[ch]);
  }
}

// ------------------------------------------------------------------------------------------------ host helpers

// Sums (items, R*C) partial buffers over the items into a (R*C,) gradient of `dtype`.
template <typename acc_t>
at::Tensor param_grad(const at::Tensor& part, int64_t items, int64_t n, at::ScalarType dtype, cudaStream_t stream) {
  at::Tensor out = at::empty({n}, part.options());
  column_sum_kernel<acc_t, acc_t><<<grid_of(ceil_div(n, kTileCols)), kThreads, 0, stream>>>(
      part.data_ptr<acc_t>(), out.data_ptr<acc_t>(), items, n, acc_t(1));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out.to(dtype);
}

template <typename scalar_t, typename acc_t>
at::Tensor attention_weights(const at::Tensor& logits, const Shape& s, int64_t groups, int sms,
                             cudaStream_t stream) {
  at::Tensor att = at::empty({s.B, s.R, s.C}, logits.options().dtype(acc_scalar_type<acc_t>()));
  attention_kernel<scalar_t, acc_t><<<elementwise_grid(s.B * s.C, sms), kThreads, 0, stream>>>(
      logits.data_ptr<scalar_t>(), att.data_ptr<acc_t>(), s, s.C / groups);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return att;
}

// ------------------------------------------------------------------------------------------------- op entries

at::Tensor splat_pool_cuda(const at::Tensor& x_in, const std::optional<at::Tensor>& scale,
                           const std::optional<at::Tensor>& shift, int64_t radix, bool relu) {
  check_cuda("x", x_in);
  check_splat_common(x_in, scale, shift, radix);
  const at::cuda::CUDAGuard device_guard(x_in.device());
  const bool cl = splat_is_channels_last(x_in);
  const at::Tensor x = x_in.contiguous(splat_layout(x_in));
  const Shape s = shape_of(x, radix);
  auto gap = at::empty({s.B, s.C}, x.options());
  if (s.B * s.C == 0) return gap;
  TORCH_CHECK(s.P > 0, "resnest_fast: splat_pool needs H*W > 0, got x of shape ", x.sizes());
  const int sms = sm_count();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "splat_pool_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor sc = params_as_acc<acc_t>(scale), sh = params_as_acc<acc_t>(shift);
    dispatch_flags(scale.has_value(), relu, [&](auto affine_c, auto relu_c) {
      constexpr bool kAffine = decltype(affine_c)::value, kRelu = decltype(relu_c)::value;
      if (!cl) {
        const bool whole_block = item_per_block(s.B * s.C, s.R * s.P, sms);
        pool_nchw_kernel<scalar_t, acc_t, kAffine, kRelu>
            <<<grid_of(item_blocks(s.B * s.C, whole_block)), kThreads, 0, stream>>>(
                x.data_ptr<scalar_t>(), ptr_or_null<acc_t>(sc), ptr_or_null<acc_t>(sh), gap.data_ptr<scalar_t>(),
                s, whole_block);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        return;
      }
      const int64_t tiles = ceil_div(s.RC(), kTileCols);
      const int64_t K = position_runs(s.B, tiles, s.P, sms);
      at::Tensor partial = at::empty({s.B * K, s.RC()}, x.options().dtype(acc_scalar_type<acc_t>()));
      pool_cl_kernel<scalar_t, acc_t, kAffine, kRelu><<<grid_of(s.B * K * tiles), kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), ptr_or_null<acc_t>(sc), ptr_or_null<acc_t>(sh), partial.data_ptr<acc_t>(), s, K);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      // partial[b*K + k, r*C + c] == partial viewed as (B, K*R, C) at [b, k*R + r, c].
      column_sum_kernel<acc_t, scalar_t><<<grid_of(s.B * ceil_div(s.C, kTileCols)), kThreads, 0, stream>>>(
          partial.data_ptr<acc_t>(), gap.data_ptr<scalar_t>(), K * s.R, s.C, acc_t(1) / static_cast<acc_t>(s.P));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return gap;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> splat_pool_backward_cuda(const at::Tensor& grad_gap,
                                                                        const at::Tensor& x_in,
                                                                        const std::optional<at::Tensor>& scale,
                                                                        const std::optional<at::Tensor>& shift,
                                                                        int64_t radix, bool relu) {
  check_cuda("x", x_in);
  check_splat_common(x_in, scale, shift, radix);
  check_same_shape("grad_gap", grad_gap, {x_in.size(0), x_in.size(1) / radix}, x_in);
  const at::cuda::CUDAGuard device_guard(x_in.device());
  const bool cl = splat_is_channels_last(x_in);
  const at::Tensor x = x_in.contiguous(splat_layout(x_in));
  const at::Tensor g = grad_gap.contiguous();
  const Shape s = shape_of(x, radix);
  auto dx = at::empty_like(x);
  const bool affine = scale.has_value();
  if (x.numel() == 0) {
    return {dx, affine ? at::zeros_like(*scale) : at::empty({0}, x.options()),
            affine ? at::zeros_like(*shift) : at::empty({0}, x.options())};
  }
  at::Tensor dscale = at::empty({0}, x.options()), dshift = at::empty({0}, x.options());
  const int sms = sm_count();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "splat_pool_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor sc = params_as_acc<acc_t>(scale), sh = params_as_acc<acc_t>(shift);
    const int64_t tiles = ceil_div(s.RC(), kTileCols);
    const int64_t K = cl ? position_runs(s.B, tiles, s.P, sms) : 1;
    const int64_t items = s.B * K;  // rows of the partial buffers
    const auto acc_options = x.options().dtype(acc_scalar_type<acc_t>());
    at::Tensor dsc_part = affine ? at::empty({items, s.RC()}, acc_options) : at::Tensor();
    at::Tensor dsh_part = affine ? at::empty({items, s.RC()}, acc_options) : at::Tensor();
    dispatch_flags(affine, relu, [&](auto affine_c, auto relu_c) {
      constexpr bool kAffine = decltype(affine_c)::value, kRelu = decltype(relu_c)::value;
      if (!cl) {
        const bool whole_block = item_per_block(s.B * s.RC(), s.P, sms);
        pool_backward_nchw_kernel<scalar_t, acc_t, kAffine, kRelu>
            <<<grid_of(item_blocks(s.B * s.RC(), whole_block)), kThreads, 0, stream>>>(
                g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), ptr_or_null<acc_t>(sc), ptr_or_null<acc_t>(sh),
                dx.data_ptr<scalar_t>(), mutable_ptr_or_null<acc_t>(dsc_part),
                mutable_ptr_or_null<acc_t>(dsh_part), s, whole_block);
      } else {
        pool_backward_cl_kernel<scalar_t, acc_t, kAffine, kRelu><<<grid_of(items * tiles), kThreads, 0, stream>>>(
            g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), ptr_or_null<acc_t>(sc), ptr_or_null<acc_t>(sh),
            dx.data_ptr<scalar_t>(), mutable_ptr_or_null<acc_t>(dsc_part), mutable_ptr_or_null<acc_t>(dsh_part), s,
            K);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    if (affine) {
      dscale = param_grad<acc_t>(dsc_part, items, s.RC(), scale->scalar_type(), stream);
      dshift = param_grad<acc_t>(dsh_part, items, s.RC(), shift->scalar_type(), stream);
    }
  });
  return {dx, dscale, dshift};
}

at::Tensor splat_combine_cuda(const at::Tensor& x_in, const at::Tensor& logits_in,
                              const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift,
                              int64_t radix, int64_t groups, bool relu) {
  check_cuda("x", x_in);
  check_splat_common(x_in, scale, shift, radix);
  check_splat_logits(x_in, logits_in, radix, groups);
  const at::cuda::CUDAGuard device_guard(x_in.device());
  const bool cl = splat_is_channels_last(x_in);
  const at::Tensor x = x_in.contiguous(splat_layout(x_in));
  const at::Tensor logits = logits_in.contiguous();
  const Shape s = shape_of(x, radix);
  auto out = at::empty({s.B, s.C, x.size(2), x.size(3)}, x.options().memory_format(splat_layout(x_in)));
  if (out.numel() == 0) return out;
  const int sms = sm_count();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "splat_combine_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor sc = params_as_acc<acc_t>(scale), sh = params_as_acc<acc_t>(shift);
    const at::Tensor att = attention_weights<scalar_t, acc_t>(logits, s, groups, sms, stream);
    dispatch_flags(scale.has_value(), relu, [&](auto affine_c, auto relu_c) {
      constexpr bool kAffine = decltype(affine_c)::value, kRelu = decltype(relu_c)::value;
      const auto launch = [&](auto index_tag) {
        using index_t = decltype(index_tag);
        combine_kernel<scalar_t, acc_t, index_t, kAffine, kRelu>
            <<<elementwise_grid(out.numel(), sms), kThreads, 0, stream>>>(
                x.data_ptr<scalar_t>(), att.data_ptr<acc_t>(), ptr_or_null<acc_t>(sc), ptr_or_null<acc_t>(sh),
                out.data_ptr<scalar_t>(), static_cast<index_t>(s.R), static_cast<index_t>(s.C),
                static_cast<index_t>(s.P), out.numel(), cl);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      };
      if (x.numel() <= std::numeric_limits<int32_t>::max()) launch(int32_t{});
      else launch(int64_t{});
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> splat_combine_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x_in, const at::Tensor& logits_in,
    const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift, int64_t radix, int64_t groups,
    bool relu) {
  check_cuda("x", x_in);
  check_splat_common(x_in, scale, shift, radix);
  check_splat_logits(x_in, logits_in, radix, groups);
  check_same_shape("grad_out", grad_out, {x_in.size(0), x_in.size(1) / radix, x_in.size(2), x_in.size(3)}, x_in);
  const at::cuda::CUDAGuard device_guard(x_in.device());
  const bool cl = splat_is_channels_last(x_in);
  const at::MemoryFormat fmt = splat_layout(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor g = grad_out.contiguous(fmt);
  const at::Tensor logits = logits_in.contiguous();
  const Shape s = shape_of(x, radix);
  auto dx = at::empty_like(x);
  const bool affine = scale.has_value();
  if (x.numel() == 0) {
    return {dx, at::zeros_like(logits), affine ? at::zeros_like(*scale) : at::empty({0}, x.options()),
            affine ? at::zeros_like(*shift) : at::empty({0}, x.options())};
  }
  auto dlogits = at::empty_like(logits);  // attention_backward_kernel writes every entry
  at::Tensor dscale = at::empty({0}, x.options()), dshift = at::empty({0}, x.options());
  const int sms = sm_count();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "splat_combine_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor sc = params_as_acc<acc_t>(scale), sh = params_as_acc<acc_t>(shift);
    const at::Tensor att = attention_weights<scalar_t, acc_t>(logits, s, groups, sms, stream);
    const int64_t tiles = ceil_div(s.RC(), kTileCols);
    const int64_t K = cl ? position_runs(s.B, tiles, s.P, sms) : 1;
    const int64_t items = s.B * K;  // rows of the partial buffers
    const auto acc_options = x.options().dtype(acc_scalar_type<acc_t>());
    at::Tensor da_part = at::empty({items, s.RC()}, acc_options);
    at::Tensor dsc_part = affine ? at::empty({items, s.RC()}, acc_options) : at::Tensor();
    at::Tensor dsh_part = affine ? at::empty({items, s.RC()}, acc_options) : at::Tensor();
    dispatch_flags(affine, relu, [&](auto affine_c, auto relu_c) {
      constexpr bool kAffine = decltype(affine_c)::value, kRelu = decltype(relu_c)::value;
      if (!cl) {
        const bool whole_block = item_per_block(s.B * s.C, s.R * s.P, sms);
        combine_backward_nchw_kernel<scalar_t, acc_t, kAffine, kRelu>
            <<<grid_of(item_blocks(s.B * s.C, whole_block)), kThreads, 0, stream>>>(
                g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), att.data_ptr<acc_t>(), ptr_or_null<acc_t>(sc),
                ptr_or_null<acc_t>(sh), dx.data_ptr<scalar_t>(), da_part.data_ptr<acc_t>(),
                mutable_ptr_or_null<acc_t>(dsc_part), mutable_ptr_or_null<acc_t>(dsh_part), s, whole_block);
      } else {
        combine_backward_cl_kernel<scalar_t, acc_t, kAffine, kRelu>
            <<<grid_of(items * tiles), kThreads, 0, stream>>>(
                g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), att.data_ptr<acc_t>(), ptr_or_null<acc_t>(sc),
                ptr_or_null<acc_t>(sh), dx.data_ptr<scalar_t>(), da_part.data_ptr<acc_t>(),
                mutable_ptr_or_null<acc_t>(dsc_part), mutable_ptr_or_null<acc_t>(dsh_part), s, K);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    attention_backward_kernel<scalar_t, acc_t><<<elementwise_grid(s.B * s.C, sms), kThreads, 0, stream>>>(
        att.data_ptr<acc_t>(), da_part.data_ptr<acc_t>(), dlogits.data_ptr<scalar_t>(), s, K, s.C / groups);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (affine) {
      dscale = param_grad<acc_t>(dsc_part, items, s.RC(), scale->scalar_type(), stream);
      dshift = param_grad<acc_t>(dsh_part, items, s.RC(), shift->scalar_type(), stream);
    }
  });
  return {dx, dlogits, dscale, dshift};
}


std::tuple<at::Tensor, at::Tensor> splat_bn_stats_cuda(const at::Tensor& x_in) {
  check_cuda("x", x_in);
  TORCH_CHECK(x_in.dim() == 4, "resnest_fast: x must be 4-D (B, K, H, W), got ", x_in.dim(), "-D");
  TORCH_CHECK(at::isFloatingType(x_in.scalar_type()), "resnest_fast: x must be floating point, got ",
              x_in.scalar_type());
  TORCH_CHECK(x_in.size(0) * x_in.size(2) * x_in.size(3) > 0,
              "resnest_fast: splat_bn_stats needs at least one value per channel, got x of shape ", x_in.sizes());
  const at::cuda::CUDAGuard device_guard(x_in.device());
  const bool cl = splat_is_channels_last(x_in);
  const at::Tensor x = x_in.contiguous(splat_layout(x_in));
  const Shape s = shape_of(x, 1);  // R = 1: C is x's channel count
  const auto out_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor var = at::empty({s.C}, x.options().dtype(out_type)), mean = at::empty({s.C}, var.options());
  if (x.numel() == 0) return {var, mean};
  const int sms = sm_count();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t tiles = ceil_div(s.C, kTileCols);
  const int64_t K = cl ? position_runs(s.B, tiles, s.P, sms) : 1;
  const int64_t items = s.B * K;  // rows of the partial buffers
  at::Tensor s1_part = at::empty({items, s.C}, x.options().dtype(at::kDouble)), s2_part = at::empty_like(s1_part);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "splat_bn_stats_cuda", [&] {
    if (!cl) {
      const bool whole_block = item_per_block(s.B * s.C, s.P, sms);
      bn_stats_nchw_kernel<scalar_t><<<grid_of(item_blocks(s.B * s.C, whole_block)), kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), s1_part.data_ptr<double>(), s2_part.data_ptr<double>(), s, whole_block);
    } else {
      bn_stats_cl_kernel<scalar_t><<<grid_of(items * tiles), kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), s1_part.data_ptr<double>(), s2_part.data_ptr<double>(), s, K);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const auto finalize = [&](auto out_tag) {
      using out_t = decltype(out_tag);
      bn_stats_finalize_kernel<scalar_t, out_t><<<grid_of(tiles), kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), s1_part.data_ptr<double>(), s2_part.data_ptr<double>(), var.data_ptr<out_t>(),
          mean.data_ptr<out_t>(), items, s.C, cl ? int64_t(1) : s.P, static_cast<double>(s.B * s.P));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (out_type == at::kDouble) finalize(double{});
    else finalize(float{});
  });
  return {var, mean};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> splat_backward_reduce_cuda(
    const at::Tensor& grad_out, const at::Tensor& x_in, const at::Tensor& logits_in, const at::Tensor& scale,
    const at::Tensor& shift, int64_t radix, int64_t groups) {
  check_cuda("x", x_in);
  check_splat_common(x_in, scale, shift, radix);
  check_splat_logits(x_in, logits_in, radix, groups);
  check_same_shape("grad_out", grad_out, {x_in.size(0), x_in.size(1) / radix, x_in.size(2), x_in.size(3)}, x_in);
  const at::cuda::CUDAGuard device_guard(x_in.device());
  const bool cl = splat_is_channels_last(x_in);
  const at::MemoryFormat fmt = splat_layout(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor g = grad_out.contiguous(fmt);
  const at::Tensor logits = logits_in.contiguous();
  const Shape s = shape_of(x, radix);
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor mx = at::zeros({s.B, s.RC()}, x.options().dtype(acc_type)), m = at::zeros_like(mx);
  if (x.numel() == 0) {
    return {at::zeros_like(logits), at::zeros({s.RC()}, scale.options()), at::zeros({s.RC()}, shift.options()), mx,
            m};
  }
  auto dlogits = at::empty_like(logits);  // attention_backward_kernel writes every entry
  at::Tensor dscale, dshift;
  const int sms = sm_count();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "splat_backward_reduce_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor sc = params_as_acc<acc_t>(scale), sh = params_as_acc<acc_t>(shift);
    const at::Tensor att = attention_weights<scalar_t, acc_t>(logits, s, groups, sms, stream);
    const int64_t tiles = ceil_div(s.RC(), kTileCols);
    const int64_t K = cl ? position_runs(s.B, tiles, s.P, sms) : 1;
    const int64_t items = s.B * K;  // rows of the partial buffers
    const auto acc_options = x.options().dtype(acc_scalar_type<acc_t>());
    at::Tensor da_part = at::empty({items, s.RC()}, acc_options);
    at::Tensor dsc_part = at::empty({items, s.RC()}, acc_options), dsh_part = at::empty({items, s.RC()}, acc_options);
    // NCHW (K == 1): the per-sample sums are final and go straight to mx and m.
    at::Tensor mx_part = cl ? at::empty({items, s.RC()}, acc_options) : mx;
    at::Tensor m_part = cl ? at::empty({items, s.RC()}, acc_options) : m;
    if (!cl) {
      const bool whole_block = item_per_block(s.B * s.C, s.R * s.P, sms);
      backward_reduce_nchw_kernel<scalar_t, acc_t>
          <<<grid_of(item_blocks(s.B * s.C, whole_block)), kThreads, 0, stream>>>(
              g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), att.data_ptr<acc_t>(), sc.data_ptr<acc_t>(),
              sh.data_ptr<acc_t>(), da_part.data_ptr<acc_t>(), dsc_part.data_ptr<acc_t>(),
              dsh_part.data_ptr<acc_t>(), mx_part.data_ptr<acc_t>(), m_part.data_ptr<acc_t>(), s, whole_block);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      backward_reduce_cl_kernel<scalar_t, acc_t><<<grid_of(items * tiles), kThreads, 0, stream>>>(
          g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), att.data_ptr<acc_t>(), sc.data_ptr<acc_t>(),
          sh.data_ptr<acc_t>(), da_part.data_ptr<acc_t>(), dsc_part.data_ptr<acc_t>(), dsh_part.data_ptr<acc_t>(),
          mx_part.data_ptr<acc_t>(), m_part.data_ptr<acc_t>(), s, K);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      // mx[b, j] = sum over the sample's K runs of part[b*K + k, j]
      for (auto pair : {std::make_pair(&mx_part, &mx), std::make_pair(&m_part, &m)}) {
        column_sum_kernel<acc_t, acc_t><<<grid_of(s.B * tiles), kThreads, 0, stream>>>(
            pair.first->data_ptr<acc_t>(), pair.second->data_ptr<acc_t>(), K, s.RC(), acc_t(1));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
    attention_backward_kernel<scalar_t, acc_t><<<elementwise_grid(s.B * s.C, sms), kThreads, 0, stream>>>(
        att.data_ptr<acc_t>(), da_part.data_ptr<acc_t>(), dlogits.data_ptr<scalar_t>(), s, K, s.C / groups);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    dscale = param_grad<acc_t>(dsc_part, items, s.RC(), scale.scalar_type(), stream);
    dshift = param_grad<acc_t>(dsh_part, items, s.RC(), shift.scalar_type(), stream);
  });
  return {dlogits, dscale, dshift, mx, m};
}

at::Tensor splat_backward_input_cuda(const at::Tensor& grad_out, const at::Tensor& grad_gap, const at::Tensor& x_in,
                                     const at::Tensor& logits_in, const at::Tensor& scale, const at::Tensor& shift,
                                     const at::Tensor& coef_a, const at::Tensor& coef_b, int64_t radix,
                                     int64_t groups) {
  check_cuda("x", x_in);
  check_splat_common(x_in, scale, shift, radix);
  check_splat_common(x_in, coef_a, coef_b, radix);
  check_splat_logits(x_in, logits_in, radix, groups);
  check_same_shape("grad_out", grad_out, {x_in.size(0), x_in.size(1) / radix, x_in.size(2), x_in.size(3)}, x_in);
  TORCH_CHECK(grad_gap.sizes() == at::IntArrayRef({x_in.size(0), x_in.size(1) / radix}),
              "resnest_fast: grad_gap must have shape (B, C), got ", grad_gap.sizes());
  TORCH_CHECK(grad_gap.device() == x_in.device(), "resnest_fast: grad_gap is on ", grad_gap.device(),
              " but x is on ", x_in.device());
  const at::cuda::CUDAGuard device_guard(x_in.device());
  const bool cl = splat_is_channels_last(x_in);
  const at::MemoryFormat fmt = splat_layout(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor g = grad_out.contiguous(fmt);
  const at::Tensor logits = logits_in.contiguous();
  const Shape s = shape_of(x, radix);
  auto dx = at::empty_like(x);
  if (x.numel() == 0) return dx;
  const int sms = sm_count();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "splat_backward_input_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor sc = params_as_acc<acc_t>(scale), sh = params_as_acc<acc_t>(shift);
    const at::Tensor ca = params_as_acc<acc_t>(coef_a), cb = params_as_acc<acc_t>(coef_b);
    // grad_gap / (H*W) (B, C), as the CPU kernel computes it; read for every split r of channel c
    const at::Tensor gg = (grad_gap.to(acc_scalar_type<acc_t>()) / static_cast<double>(s.P)).contiguous();
    const at::Tensor att = attention_weights<scalar_t, acc_t>(logits, s, groups, sms, stream);
    const auto launch = [&](auto index_tag) {
      using index_t = decltype(index_tag);
      backward_input_kernel<scalar_t, acc_t, index_t><<<elementwise_grid(x.numel(), sms), kThreads, 0, stream>>>(
          g.data_ptr<scalar_t>(), gg.data_ptr<acc_t>(), x.data_ptr<scalar_t>(), att.data_ptr<acc_t>(),
          sc.data_ptr<acc_t>(), sh.data_ptr<acc_t>(), ca.data_ptr<acc_t>(), cb.data_ptr<acc_t>(),
          dx.data_ptr<scalar_t>(), static_cast<index_t>(s.RC()), static_cast<index_t>(s.C),
          static_cast<index_t>(s.P), x.numel(), cl);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (x.numel() <= std::numeric_limits<int32_t>::max()) launch(int32_t{});
    else launch(int64_t{});
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(resnest_fast, CUDA, m) {
  m.impl("splat_pool", &splat_pool_cuda);
  m.impl("splat_pool_backward", &splat_pool_backward_cuda);
  m.impl("splat_combine", &splat_combine_cuda);
  m.impl("splat_combine_backward", &splat_combine_backward_cuda);
  m.impl("splat_bn_stats", &splat_bn_stats_cuda);
  m.impl("splat_backward_reduce", &splat_backward_reduce_cuda);
  m.impl("splat_backward_input", &splat_backward_input_cuda);
}

}  // namespace resnest_fast
