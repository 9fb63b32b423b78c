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
// Launch geometry (ops/launch_geometry.h: plan_launch gives every grid, the mapping functions every index, and
// tests/ops/test_cuda_launch_model.py checks both on the CPU; x is read in place in either dense layout):
//   NCHW:          a block handles one chunk of one row of x (one channel of one sample: P contiguous values), so
//                  even batch-1 launches have several blocks per SM. Each thread computes its trip count first,
//                  then per step issues `unroll` independent loads per input (128-bit when the rows are aligned),
//                  and only then uses them, writing outputs with stores as wide as those loads; a tail step does
//                  the same with predicated scalar loads and stores.
//   channels_last: blocks are 2-D tiles of 32 channels x 8 position lanes, so each warp loads 32 contiguous
//                  channels of one position (coalesced); a sample's positions are cut into K runs; the lanes walk
//                  their positions `unroll` loads at a time, trip count first.
// Reductions are two-stage: every block writes its partial sums to its own slot of a (B*K, channels) buffer (K:
// chunks or runs), which small finishing kernels add in a fixed order. No atomics, so results are bit-reproducible
// run to run on a given GPU (K depends on its SM count, as the CPU's split depends on its thread count).
// No per-element integer division: blocks and threads decode their indices once; elements are reached by adding.
// splat_combine takes the radix as a template parameter (1, 2, 4; any other radix <= kMaxRadix runs a generic
// instance), so the loads of all splits are issued together.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "ops/launch_geometry.h"
#include "ops/splat_checks.h"
#include "ops/splat_host.h"
#include "ops/splat_math.h"

namespace resnest_fast {
namespace {

using launch::ChunkSpan;
using launch::Kernel;
using launch::kThreads;
using launch::kTileCols;
using launch::kTileRows;
using launch::kWarps;
using launch::PositionRuns;
using launch::RowChunks;
using launch::RunThread;
using launch::ceil_div;

#define RF_BOUNDS(kernel) __launch_bounds__(kThreads, launch::min_blocks_per_sm(kernel))

void check_cuda(const char* name, const at::Tensor& t) { check_device_type(name, t, at::kCUDA, "CUDA"); }

int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

dim3 grid_of(int64_t blocks) {
  TORCH_CHECK(blocks >= 1 && blocks <= std::numeric_limits<int32_t>::max(),
              "resnest_fast: input too large for one CUDA launch (", blocks, " blocks)");
  return dim3(static_cast<unsigned int>(blocks));
}

// Grid-stride kernels over (B, C) (attention weights): a few waves of blocks, the loop covers any size.
dim3 elementwise_grid(int64_t n, int sms) {
  return grid_of(std::min<int64_t>(ceil_div(n, kThreads), int64_t(sms) * 64));
}

// 128-bit loads along NCHW rows need every row start aligned: P a multiple of the vector and 16-byte base pointers
// (chunks start at multiples of launch::chunk_quantum, itself a multiple of every vector width).
template <int V, typename... Ptrs>
bool rows_aligned(int64_t P, const Ptrs*... ptrs) {
  return V > 1 && P % V == 0 && ((reinterpret_cast<uintptr_t>(ptrs) % launch::kVecBytes == 0) && ...);
}

// The vector width of U loads of scalar_t: 16 bytes, at most U values.
template <typename scalar_t, int U>
constexpr int vec_of() {
  constexpr int v = launch::vec_width(sizeof(scalar_t));
  return v < U ? v : U;
}

// Whether kernel k's NCHW rows of x (and grad_out) take its vector loads.
template <Kernel k, typename scalar_t, typename... Ptrs>
bool rows_vectorized(int64_t P, const Ptrs*... ptrs) {
  return rows_aligned<vec_of<scalar_t, launch::unroll_of(k)>()>(P, ptrs...);
}

// ------------------------------------------------------------------------------------------- device helpers

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sums each v[n] over the block, in a fixed order; thread 0 gets the totals. Every thread must call it, once.
template <typename T, int N>
__device__ __forceinline__ void block_sum(T (&v)[N], T (&smem)[N][kWarps]) {
#pragma unroll
  for (int n = 0; n < N; ++n) v[n] = warp_sum(v[n]);
  const int warp = threadIdx.x / 32;
  if (threadIdx.x % 32 == 0) {
#pragma unroll
    for (int n = 0; n < N; ++n) smem[n][warp] = v[n];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
#pragma unroll
    for (int n = 0; n < N; ++n) {
      T s = 0;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) s += smem[n][w];
      v[n] = s;
    }
  }
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

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// V values at p (aligned to V * sizeof(T)) in one load: through an integer vector, since a copy of a struct of
// c10::Half / c10::BFloat16 is split into 16-bit loads.
template <typename T, int V>
__device__ __forceinline__ Pack<T, V> load_pack(const T* p) {
  static_assert(sizeof(T) * V == 16 || sizeof(T) * V == 8 || sizeof(T) * V == 4, "a 32-, 64- or 128-bit vector");
  using Raw = std::conditional_t<sizeof(T) * V == 16, uint4, std::conditional_t<sizeof(T) * V == 8, uint2, unsigned>>;
  const Raw raw = *reinterpret_cast<const Raw*>(p);
  Pack<T, V> out;
  memcpy(&out, &raw, sizeof(out));
  return out;
}

// The store matching load_pack: V values to p (aligned to V * sizeof(T)) in one store. Through __stwb (st.global.wb,
// the default caching): NVVM splits a plain store of the packed value back into V scalar stores.
template <typename T, int V>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, V>& v) {
  if constexpr (V == 1) {
    *p = v.v[0];
  } else {
    static_assert(sizeof(T) * V == 16 || sizeof(T) * V == 8 || sizeof(T) * V == 4, "a 32-, 64- or 128-bit vector");
    using Raw = std::conditional_t<sizeof(T) * V == 16, uint4, std::conditional_t<sizeof(T) * V == 8, uint2, unsigned>>;
    Raw raw;
    memcpy(&raw, &v, sizeof(raw));
    __stwb(reinterpret_cast<Raw*>(p), raw);
  }
}

// NCHW: calls f(v) for every value i of thread t's share of the chunk `s`, v[n] = rows[n][i], after loading
// them: per full step, U values of each of the NS rows, V at a time (one 128-bit load when V*sizeof == 16), all
// loads of a step issued before any use; then the tail step with predicated scalar loads. The trip count
// (s.full_steps) is known before the loop. Indices are launch::chunk_index / tail_index, which the launch-model
// test enumerates. With an output row `out` (not nullptr), f returns out[i] and for_chunk stores it, V values per
// store as wide as the loads: a warp's store then covers whole sectors, as its loads do (V separate scalar stores
// of values V apart would each touch V times as many sectors).
template <int U, int V, int NS, typename scalar_t, typename Out, typename F>
__device__ __forceinline__ void for_chunk(const ChunkSpan& s, const scalar_t* const (&rows)[NS], Out out, F&& f) {
  constexpr bool kStores = !std::is_same_v<Out, std::nullptr_t>;
  static_assert(!kStores || std::is_same_v<Out, scalar_t*>, "the output row has the dtype of the input rows");
  const int t = threadIdx.x;
#pragma unroll 1  // a step is the unit of loads in flight; unrolling steps would only add registers
  for (int64_t step = 0; step < s.full_steps; ++step) {
    scalar_t v[NS][U];
#pragma unroll
    for (int q = 0; q < U / V; ++q) {
      const int64_t i = launch::chunk_index<U, V>(s, step, q * V, t);
#pragma unroll
      for (int n = 0; n < NS; ++n) {
        if constexpr (V == 1) {
          v[n][q] = rows[n][i];
        } else {
          const Pack<scalar_t, V> p = load_pack<scalar_t, V>(rows[n] + i);
#pragma unroll
          for (int j = 0; j < V; ++j) v[n][q * V + j] = p.v[j];
        }
      }
    }
#pragma unroll
    for (int q = 0; q < U / V; ++q) {
      Pack<scalar_t, V> o;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        scalar_t vu[NS];
#pragma unroll
        for (int n = 0; n < NS; ++n) vu[n] = v[n][q * V + j];
        if constexpr (kStores) o.v[j] = f(vu);
        else f(vu);
      }
      if constexpr (kStores) store_pack<scalar_t, V>(out + launch::chunk_index<U, V>(s, step, q * V, t), o);
    }
  }
  scalar_t v[NS][U];
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int64_t i = launch::tail_index<U>(s, u, t);
#pragma unroll
    for (int n = 0; n < NS; ++n) v[n][u] = i < s.end ? rows[n][i] : scalar_t(0);
  }
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int64_t i = launch::tail_index<U>(s, u, t);
    if (i < s.end) {
      scalar_t vu[NS];
#pragma unroll
      for (int n = 0; n < NS; ++n) vu[n] = v[n][u];
      if constexpr (kStores) out[i] = f(vu);
      else f(vu);
    }
  }
}

// for_chunk with 128-bit loads (and stores) where the launcher found the rows aligned, scalar ones otherwise.
template <int U, int NS, typename scalar_t, typename F, typename Out = std::nullptr_t>
__device__ __forceinline__ void for_chunk_any(const ChunkSpan& s, const scalar_t* const (&rows)[NS], bool vec, F&& f,
                                              Out out = nullptr) {
  constexpr int V = vec_of<scalar_t, U>();
  if (V > 1 && vec) for_chunk<U, V, NS>(s, rows, out, f);
  else for_chunk<U, 1, NS>(s, rows, out, f);
}

// channels_last: calls f(p, o, v) for the positions p of the thread (launch::run_position), o = p * strides[0] the
// offset of the value in stream 0 (x's layout, also dx's), v[n] = cols[n][p * strides[n]] (cols[n] already points
// at the thread's channel of position 0 of its sample), loading U positions of every stream per step before using
// them; trip count r.count first, a predicated tail step last. Offsets advance by additions within a step.
template <int U, int NS, typename scalar_t, typename F>
__device__ __forceinline__ void for_run(const RunThread& r, const scalar_t* const (&cols)[NS],
                                        const int64_t (&strides)[NS], F&& f) {
  const int64_t full = r.count / U;
  int64_t d[NS];  // offset between consecutive positions of the thread
#pragma unroll
  for (int n = 0; n < NS; ++n) d[n] = kTileRows * strides[n];
  const auto step = [&](int64_t j0, auto tail_c) {
    constexpr bool kTail = decltype(tail_c)::value;
    const int64_t p0 = launch::run_position(r, j0), left = r.count - j0;
    int64_t o0[NS];
#pragma unroll
    for (int n = 0; n < NS; ++n) o0[n] = p0 * strides[n];
    scalar_t v[NS][U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int n = 0; n < NS; ++n) v[n][u] = (!kTail || u < left) ? cols[n][o0[n] + u * d[n]] : scalar_t(0);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (!kTail || u < left) {
        scalar_t vu[NS];
#pragma unroll
        for (int n = 0; n < NS; ++n) vu[n] = v[n][u];
        f(p0 + int64_t(u) * kTileRows, o0[0] + u * d[0], vu);
      }
    }
  };
#pragma unroll 1
  for (int64_t k = 0; k < full; ++k) step(k * U, std::false_type{});
  step(full * U, std::true_type{});
}

template <typename acc_t, bool kAffine>
__device__ __forceinline__ void load_params(const acc_t* __restrict__ scale, const acc_t* __restrict__ shift,
                                            int64_t ch, acc_t& sc, acc_t& sh) {
  sc = kAffine ? scale[ch] : acc_t(1);
  sh = kAffine ? shift[ch] : acc_t(0);
}

// ---------------------------------------------------------------------------------------- finishing kernels

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

// NCHW: block (row = b*RC + ch, chunk) sums act(x) over its chunk into partial[chunk_slot], read by
// column_sum_kernel as (B, K*R, C) (partial[b*K + k, r*C + c] = [b, k*R + r, c]): it adds the chunks and the
// radix splits of each channel at once.
template <typename scalar_t, typename acc_t, bool kAffine, bool kRelu>
__global__ void RF_BOUNDS(Kernel::Pool)
    pool_nchw_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ scale,
                     const acc_t* __restrict__ shift, acc_t* __restrict__ partial, RowChunks g, int64_t RC,
                     bool vec) {
  __shared__ acc_t smem[1][kWarps];
  const ChunkSpan span = launch::chunk_span(g, blockIdx.x);
  const int64_t ch = span.row % RC;
  acc_t sc, sh;
  load_params<acc_t, kAffine>(scale, shift, ch, sc, sh);
  const scalar_t* rows[1] = {x + span.row * g.len};
  acc_t sum[1] = {acc_t(0)};
  for_chunk_any<launch::unroll_of(Kernel::Pool), 1>(span, rows, vec, [&](const scalar_t(&v)[1]) {
    sum[0] += splat_act<acc_t, kRelu>(splat_pre<acc_t, kAffine>(static_cast<acc_t>(v[0]), sc, sh));
  });
  block_sum(sum, smem);
  if (threadIdx.x == 0) partial[launch::chunk_slot(g, span.row, span.chunk, RC)] = sum[0];
}

// channels_last: tile (b, run k, channels ch of R*C) sums act(x[b, p, ch]) over its positions into
// partial[b*K + k, ch], the layout of the NCHW partial sums.
template <typename scalar_t, typename acc_t, bool kAffine, bool kRelu>
__global__ void RF_BOUNDS(Kernel::Pool)
    pool_cl_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ scale, const acc_t* __restrict__ shift,
                   acc_t* __restrict__ partial, PositionRuns g) {
  __shared__ acc_t smem[1][kTileRows][kTileCols];
  const RunThread rt = launch::run_thread(g, blockIdx.x, threadIdx.x);
  acc_t sum[1] = {acc_t(0)};
  if (rt.ch < g.N) {
    acc_t sc, sh;
    load_params<acc_t, kAffine>(scale, shift, rt.ch, sc, sh);
    const scalar_t* cols[1] = {x + rt.b * g.P * g.N + rt.ch};
    const int64_t strides[1] = {g.N};
    for_run<launch::unroll_of(Kernel::Pool), 1>(rt, cols, strides, [&](int64_t, int64_t, const scalar_t(&v)[1]) {
      sum[0] += splat_act<acc_t, kRelu>(splat_pre<acc_t, kAffine>(static_cast<acc_t>(v[0]), sc, sh));
    });
  }
  tile_rows_sum(sum, smem);
  if (rt.ty == 0 && rt.ch < g.N) partial[launch::run_slot(g, rt)] = sum[0];
}

// ----------------------------------------------------------------------------------------------- pool backward
// d gap[b, c] / d act(x[b, r*C + c, p]) = 1/P for every r and p.

// NCHW: block (row = b*RC + ch, chunk); dscale/dshift sums go to part[chunk_slot].
template <typename scalar_t, typename acc_t, bool kAffine, bool kRelu>
__global__ void RF_BOUNDS(Kernel::PoolBackward)
    pool_backward_nchw_kernel(const scalar_t* __restrict__ grad_gap, const scalar_t* __restrict__ x,
                              const acc_t* __restrict__ scale, const acc_t* __restrict__ shift,
                              scalar_t* __restrict__ dx, acc_t* __restrict__ dscale_part,
                              acc_t* __restrict__ dshift_part, RowChunks g, Shape s, bool vec) {
  __shared__ acc_t smem[2][kWarps];
  const ChunkSpan span = launch::chunk_span(g, blockIdx.x);
  const int64_t b = span.row / s.RC(), ch = span.row - b * s.RC();
  const acc_t gr = static_cast<acc_t>(grad_gap[b * s.C + ch % s.C]) * (acc_t(1) / static_cast<acc_t>(s.P));
  acc_t sc, sh;
  load_params<acc_t, kAffine>(scale, shift, ch, sc, sh);
  const scalar_t* rows[1] = {x + span.row * g.len};
  scalar_t* drow = dx + span.row * g.len;
  acc_t sums[2] = {acc_t(0), acc_t(0)};  // dscale, dshift
  const auto dx_of = [&](const scalar_t(&v)[1]) {
    const acc_t xv = static_cast<acc_t>(v[0]);
    const acc_t d = splat_times_act_grad<acc_t, kRelu>(gr, splat_pre<acc_t, kAffine>(xv, sc, sh));
    if constexpr (kAffine) {
      sums[0] += d * xv;
      sums[1] += d;
    }
    return static_cast<scalar_t>(kAffine ? d * sc : d);
  };
  for_chunk_any<launch::unroll_of(Kernel::PoolBackward), 1>(span, rows, vec, dx_of, drow);
  if constexpr (kAffine) {
    block_sum(sums, smem);
    if (threadIdx.x == 0) {
      const int64_t o = launch::chunk_slot(g, span.row, span.chunk, s.RC());
      dscale_part[o] = sums[0];
      dshift_part[o] = sums[1];
    }
  }
}

// channels_last: tile (b, run k, channels ch of R*C); dscale/dshift sums go to part[b*K + k, ch].
template <typename scalar_t, typename acc_t, bool kAffine, bool kRelu>
__global__ void RF_BOUNDS(Kernel::PoolBackward)
    pool_backward_cl_kernel(const scalar_t* __restrict__ grad_gap, const scalar_t* __restrict__ x,
                            const acc_t* __restrict__ scale, const acc_t* __restrict__ shift,
                            scalar_t* __restrict__ dx, acc_t* __restrict__ dscale_part,
                            acc_t* __restrict__ dshift_part, PositionRuns g, Shape s) {
  __shared__ acc_t smem[2][kTileRows][kTileCols];
  const RunThread rt = launch::run_thread(g, blockIdx.x, threadIdx.x);
  acc_t sums[2] = {acc_t(0), acc_t(0)};  // dscale, dshift
  if (rt.ch < g.N) {
    const acc_t gr = static_cast<acc_t>(grad_gap[rt.b * s.C + rt.ch % s.C]) * (acc_t(1) / static_cast<acc_t>(s.P));
    acc_t sc, sh;
    load_params<acc_t, kAffine>(scale, shift, rt.ch, sc, sh);
    const int64_t base = rt.b * g.P * g.N + rt.ch;
    const scalar_t* cols[1] = {x + base};
    scalar_t* dcol = dx + base;
    const int64_t strides[1] = {g.N};
    constexpr int U = launch::unroll_of(Kernel::PoolBackward);
    for_run<U, 1>(rt, cols, strides, [&](int64_t, int64_t o, const scalar_t(&v)[1]) {
      const acc_t xv = static_cast<acc_t>(v[0]);
      const acc_t d = splat_times_act_grad<acc_t, kRelu>(gr, splat_pre<acc_t, kAffine>(xv, sc, sh));
      dcol[o] = static_cast<scalar_t>(kAffine ? d * sc : d);
      if constexpr (kAffine) {
        sums[0] += d * xv;
        sums[1] += d;
      }
    });
  }
  if constexpr (kAffine) {
    tile_rows_sum(sums, smem);
    if (rt.ty == 0 && rt.ch < g.N) {
      dscale_part[launch::run_slot(g, rt)] = sums[0];
      dshift_part[launch::run_slot(g, rt)] = sums[1];
    }
  }
}

// --------------------------------------------------------------------------------------------- combine forward
// out[b, c, p] = sum_r att[b, r, c] * act(x[b, r*C + c, p]). kRadix is R for the radices compiled in: the loads
// of all R splits of a step are issued together. kRadix == 0 is the generic instance for any other R <= kMaxRadix:
// within a step it walks the splits one after another, the kUnroll loads of one split in flight together.

template <typename acc_t, bool kAffine, bool kRelu>
__device__ __forceinline__ acc_t combine_term(acc_t v, acc_t a, acc_t sc, acc_t sh) {
  return a * splat_act<acc_t, kRelu>(splat_pre<acc_t, kAffine>(v, sc, sh));
}

// NCHW: block (row = b*C + c of out, chunk); split r of the row is x's row b*R*C + r*C + c.
template <typename scalar_t, typename acc_t, int kRadix, bool kAffine, bool kRelu>
__global__ void RF_BOUNDS(Kernel::Combine)
    combine_nchw_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ att,
                        const acc_t* __restrict__ scale, const acc_t* __restrict__ shift,
                        scalar_t* __restrict__ out, RowChunks g, Shape s, bool vec) {
  constexpr int U = launch::unroll_of(Kernel::Combine, kRadix > 0 ? kRadix : kMaxRadix + 1);
  const ChunkSpan span = launch::chunk_span(g, blockIdx.x);
  const int64_t b = span.row / s.C, c = span.row - b * s.C;
  const scalar_t* x0 = x + (b * s.RC() + c) * g.len;  // split r: x0 + r * C * P
  scalar_t* orow = out + span.row * g.len;
  if constexpr (kRadix > 0) {
    acc_t a[kRadix], sc[kRadix], sh[kRadix];
    const scalar_t* rows[kRadix];
#pragma unroll
    for (int r = 0; r < kRadix; ++r) {
      a[r] = att[(b * kRadix + r) * s.C + c];
      load_params<acc_t, kAffine>(scale, shift, r * s.C + c, sc[r], sh[r]);
      rows[r] = x0 + r * s.C * g.len;
    }
    const auto out_of = [&](const scalar_t(&v)[kRadix]) {
      acc_t sum = 0;
#pragma unroll
      for (int r = 0; r < kRadix; ++r)
        sum += combine_term<acc_t, kAffine, kRelu>(static_cast<acc_t>(v[r]), a[r], sc[r], sh[r]);
      return static_cast<scalar_t>(sum);
    };
    for_chunk_any<U, kRadix>(span, rows, vec, out_of, orow);
  } else {
    const int t = threadIdx.x;
    for (int64_t step = 0; step <= span.full_steps; ++step) {  // the last step is the (predicated) tail
      const bool tail = step == span.full_steps;
      acc_t sum[U];
#pragma unroll
      for (int u = 0; u < U; ++u) sum[u] = 0;
#pragma unroll 1  // one split's loads in flight at a time: unrolling the splits would only add registers
      for (int64_t r = 0; r < s.R; ++r) {
        const scalar_t* row = x0 + r * s.C * g.len;
        const acc_t a = att[(b * s.R + r) * s.C + c];
        acc_t sc, sh;
        load_params<acc_t, kAffine>(scale, shift, r * s.C + c, sc, sh);
        scalar_t v[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int64_t i = tail ? launch::tail_index<U>(span, u, t) : launch::chunk_index<U, 1>(span, step, u, t);
          v[u] = i < span.end ? row[i] : scalar_t(0);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) sum[u] += combine_term<acc_t, kAffine, kRelu>(static_cast<acc_t>(v[u]), a, sc, sh);
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t i = tail ? launch::tail_index<U>(span, u, t) : launch::chunk_index<U, 1>(span, step, u, t);
        if (i < span.end) orow[i] = static_cast<scalar_t>(sum[u]);
      }
    }
  }
}

// channels_last: tile (b, run k, output channels c of C): the R splits of a position sit C apart.
template <typename scalar_t, typename acc_t, int kRadix, bool kAffine, bool kRelu>
__global__ void RF_BOUNDS(Kernel::Combine)
    combine_cl_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ att,
                      const acc_t* __restrict__ scale, const acc_t* __restrict__ shift,
                      scalar_t* __restrict__ out, PositionRuns g, Shape s) {
  constexpr int U = launch::unroll_of(Kernel::Combine, kRadix > 0 ? kRadix : kMaxRadix + 1, true);
  const RunThread rt = launch::run_thread(g, blockIdx.x, threadIdx.x);
  if (rt.ch >= g.N) return;  // no barrier in this kernel
  const int64_t c = rt.ch;
  const scalar_t* x0 = x + rt.b * g.P * s.RC() + c;  // split r of position p: x0[p*RC + r*C]
  scalar_t* ocol = out + rt.b * g.P * s.C + c;
  if constexpr (kRadix > 0) {
    acc_t a[kRadix], sc[kRadix], sh[kRadix];
    const scalar_t* cols[kRadix];
    int64_t strides[kRadix];
#pragma unroll
    for (int r = 0; r < kRadix; ++r) {
      a[r] = att[(rt.b * kRadix + r) * s.C + c];
      load_params<acc_t, kAffine>(scale, shift, r * s.C + c, sc[r], sh[r]);
      cols[r] = x0 + r * s.C;
      strides[r] = s.RC();
    }
    for_run<U, kRadix>(rt, cols, strides, [&](int64_t p, int64_t, const scalar_t(&v)[kRadix]) {
      acc_t sum = 0;
#pragma unroll
      for (int r = 0; r < kRadix; ++r)
        sum += combine_term<acc_t, kAffine, kRelu>(static_cast<acc_t>(v[r]), a[r], sc[r], sh[r]);
      ocol[p * s.C] = static_cast<scalar_t>(sum);
    });
  } else {
    // positions j0 .. j0 + U - 1 of the thread; only the tail step (kTail) checks them against rt.count
    const int64_t d = kTileRows * s.RC(), dout = kTileRows * s.C;  // between consecutive positions of the thread
    const auto step = [&](int64_t j0, auto tail_c) {
      constexpr bool kTail = decltype(tail_c)::value;
      const int64_t left = rt.count - j0, p0 = launch::run_position(rt, j0);
      acc_t sum[U];
#pragma unroll
      for (int u = 0; u < U; ++u) sum[u] = 0;
#pragma unroll 1  // one split's loads in flight at a time: unrolling the splits would only add registers
      for (int64_t r = 0; r < s.R; ++r) {
        const acc_t a = att[(rt.b * s.R + r) * s.C + c];
        acc_t sc, sh;
        load_params<acc_t, kAffine>(scale, shift, r * s.C + c, sc, sh);
        const scalar_t* xr = x0 + p0 * s.RC() + r * s.C;  // split r, position p0
        scalar_t v[U];
#pragma unroll
        for (int u = 0; u < U; ++u) v[u] = (!kTail || u < left) ? xr[u * d] : scalar_t(0);
#pragma unroll
        for (int u = 0; u < U; ++u) sum[u] += combine_term<acc_t, kAffine, kRelu>(static_cast<acc_t>(v[u]), a, sc, sh);
      }
      scalar_t* op = ocol + p0 * s.C;
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (!kTail || u < left) op[u * dout] = static_cast<scalar_t>(sum[u]);
    };
    const int64_t full = rt.count / U;  // trip count first
#pragma unroll 1
    for (int64_t k = 0; k < full; ++k) step(k * U, std::false_type{});
    step(full * U, std::true_type{});
  }
}

// -------------------------------------------------------------------------------------------- combine backward
// For x[b, r*C + c, p]: pre = x*scale + shift, d a[b, r, c] += g * act(pre), d = g * a * act'(pre),
// dx = d * scale, dscale += d * x, dshift += d, with g = grad_out[b, c, p].

// NCHW: block (row = b*RC + ch, chunk), with grad_out's row (b, c) loaded alongside; sums go to part[chunk_slot].
template <typename scalar_t, typename acc_t, bool kAffine, bool kRelu>
__global__ void RF_BOUNDS(Kernel::CombineBackward)
    combine_backward_nchw_kernel(const scalar_t* __restrict__ gout, const scalar_t* __restrict__ x,
                                 const acc_t* __restrict__ att, const acc_t* __restrict__ scale,
                                 const acc_t* __restrict__ shift, scalar_t* __restrict__ dx,
                                 acc_t* __restrict__ da_part, acc_t* __restrict__ dscale_part,
                                 acc_t* __restrict__ dshift_part, RowChunks g, Shape s, bool vec) {
  constexpr int N = kAffine ? 3 : 1;  // d a, then dscale and dshift
  __shared__ acc_t smem[N][kWarps];
  const ChunkSpan span = launch::chunk_span(g, blockIdx.x);
  const int64_t b = span.row / s.RC(), ch = span.row - b * s.RC();
  const acc_t a = att[span.row];  // att[b, r, c] with ch = r*C + c
  acc_t sc, sh;
  load_params<acc_t, kAffine>(scale, shift, ch, sc, sh);
  const scalar_t* rows[2] = {x + span.row * g.len, gout + (b * s.C + ch % s.C) * g.len};
  scalar_t* drow = dx + span.row * g.len;
  acc_t sums[N];
#pragma unroll
  for (int n = 0; n < N; ++n) sums[n] = 0;
  const auto dx_of = [&](const scalar_t(&v)[2]) {
    const acc_t xv = static_cast<acc_t>(v[0]), gv = static_cast<acc_t>(v[1]);
    const acc_t pre = splat_pre<acc_t, kAffine>(xv, sc, sh);
    sums[0] += gv * splat_act<acc_t, kRelu>(pre);
    const acc_t d = splat_times_act_grad<acc_t, kRelu>(gv * a, pre);
    if constexpr (kAffine) {
      sums[1] += d * xv;
      sums[2] += d;
    }
    return static_cast<scalar_t>(kAffine ? d * sc : d);
  };
  for_chunk_any<launch::unroll_of(Kernel::CombineBackward), 2>(span, rows, vec, dx_of, drow);
  block_sum(sums, smem);
  if (threadIdx.x == 0) {
    const int64_t o = launch::chunk_slot(g, span.row, span.chunk, s.RC());
    da_part[o] = sums[0];
    if constexpr (kAffine) {
      dscale_part[o] = sums[1];
      dshift_part[o] = sums[2];
    }
  }
}

// channels_last: tile (b, run k, channels ch of R*C); sums go to part[b*K + k, ch].
template <typename scalar_t, typename acc_t, bool kAffine, bool kRelu>
__global__ void RF_BOUNDS(Kernel::CombineBackward)
    combine_backward_cl_kernel(const scalar_t* __restrict__ gout, const scalar_t* __restrict__ x,
                               const acc_t* __restrict__ att, const acc_t* __restrict__ scale,
                               const acc_t* __restrict__ shift, scalar_t* __restrict__ dx,
                               acc_t* __restrict__ da_part, acc_t* __restrict__ dscale_part,
                               acc_t* __restrict__ dshift_part, PositionRuns g, Shape s) {
  constexpr int N = kAffine ? 3 : 1;  // d a, then dscale and dshift
  __shared__ acc_t smem[N][kTileRows][kTileCols];
  const RunThread rt = launch::run_thread(g, blockIdx.x, threadIdx.x);
  acc_t sums[N];
#pragma unroll
  for (int n = 0; n < N; ++n) sums[n] = 0;
  if (rt.ch < g.N) {
    const acc_t a = att[rt.b * s.RC() + rt.ch];  // att[b, r, c] with ch = r*C + c
    acc_t sc, sh;
    load_params<acc_t, kAffine>(scale, shift, rt.ch, sc, sh);
    const int64_t base = rt.b * g.P * g.N + rt.ch;
    const scalar_t* cols[2] = {x + base, gout + rt.b * g.P * s.C + rt.ch % s.C};
    const int64_t strides[2] = {g.N, s.C};
    scalar_t* dcol = dx + base;
    constexpr int U = launch::unroll_of(Kernel::CombineBackward);
    for_run<U, 2>(rt, cols, strides, [&](int64_t, int64_t o, const scalar_t(&v)[2]) {
      const acc_t xv = static_cast<acc_t>(v[0]), gv = static_cast<acc_t>(v[1]);
      const acc_t pre = splat_pre<acc_t, kAffine>(xv, sc, sh);
      sums[0] += gv * splat_act<acc_t, kRelu>(pre);
      const acc_t d = splat_times_act_grad<acc_t, kRelu>(gv * a, pre);
      dcol[o] = static_cast<scalar_t>(kAffine ? d * sc : d);
      if constexpr (kAffine) {
        sums[1] += d * xv;
        sums[2] += d;
      }
    });
  }
  tile_rows_sum(sums, smem);
  if (rt.ty == 0 && rt.ch < g.N) {
    const int64_t o = launch::run_slot(g, rt);
    da_part[o] = sums[0];
    if constexpr (kAffine) {
      dscale_part[o] = sums[1];
      dshift_part[o] = sums[2];
    }
  }
}

// --------------------------------------------------------------------------------------------- batch statistics
// Sums over (B, H, W) of d = x - k and d^2 per channel, k the channel's first value x[0, ch, 0, 0]; accumulated in
// double as the CPU kernel does (shifting by a value of the data keeps E[d^2] - E[d]^2 free of the cancellation
// of E[x^2] - E[x]^2 when |mean| >> std; double keeps the long sums exact enough whatever the count). The op is
// memory bound on GPUs with full-rate double; bn_stats_finalize_kernel turns the sums into var and mean.

// NCHW: block (row = b*C + ch of x's C channels, chunk); its sums go to part[chunk_slot].
template <typename scalar_t>
__global__ void RF_BOUNDS(Kernel::BnStats)
    bn_stats_nchw_kernel(const scalar_t* __restrict__ x, double* __restrict__ s1_part, double* __restrict__ s2_part,
                         RowChunks g, int64_t C, bool vec) {
  __shared__ double smem[2][kWarps];
  const ChunkSpan span = launch::chunk_span(g, blockIdx.x);
  const int64_t ch = span.row % C;
  const double k = static_cast<double>(x[ch * g.len]);
  const scalar_t* rows[1] = {x + span.row * g.len};
  double sums[2] = {0.0, 0.0};
  for_chunk_any<launch::unroll_of(Kernel::BnStats), 1>(span, rows, vec, [&](const scalar_t(&v)[1]) {
    const double d = static_cast<double>(v[0]) - k;
    sums[0] += d;
    sums[1] += d * d;
  });
  block_sum(sums, smem);
  if (threadIdx.x == 0) {
    const int64_t o = launch::chunk_slot(g, span.row, span.chunk, C);
    s1_part[o] = sums[0];
    s2_part[o] = sums[1];
  }
}

// channels_last: tile (b, run k, channels ch); sums go to part[b*K + k, ch].
template <typename scalar_t>
__global__ void RF_BOUNDS(Kernel::BnStats)
    bn_stats_cl_kernel(const scalar_t* __restrict__ x, double* __restrict__ s1_part, double* __restrict__ s2_part,
                       PositionRuns g) {
  __shared__ double smem[2][kTileRows][kTileCols];
  const RunThread rt = launch::run_thread(g, blockIdx.x, threadIdx.x);
  double sums[2] = {0.0, 0.0};
  if (rt.ch < g.N) {
    const double k = static_cast<double>(x[rt.ch]);
    const scalar_t* cols[1] = {x + rt.b * g.P * g.N + rt.ch};
    const int64_t strides[1] = {g.N};
    for_run<launch::unroll_of(Kernel::BnStats), 1>(rt, cols, strides, [&](int64_t, int64_t, const scalar_t(&v)[1]) {
      const double d = static_cast<double>(v[0]) - k;
      sums[0] += d;
      sums[1] += d * d;
    });
  }
  tile_rows_sum(sums, smem);
  if (rt.ty == 0 && rt.ch < g.N) {
    s1_part[launch::run_slot(g, rt)] = sums[0];
    s2_part[launch::run_slot(g, rt)] = sums[1];
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

template <typename acc_t>
__device__ __forceinline__ void backward_reduce_terms(acc_t xv, acc_t gv, acc_t a, acc_t sc, acc_t sh,
                                                      acc_t (&sums)[5]) {
  const auto t = splat_backward_reduce_terms<acc_t>(xv, gv, a, sc, sh);
  sums[0] += t.da;
  sums[1] += t.dscale;
  sums[2] += t.dshift;
  sums[3] += t.mx;
  sums[4] += t.m;
}

template <typename acc_t>
__device__ __forceinline__ void store_sums(const acc_t (&sums)[5], int64_t o, acc_t* __restrict__ da_part,
                                           acc_t* __restrict__ dscale_part, acc_t* __restrict__ dshift_part,
                                           acc_t* __restrict__ mx_part, acc_t* __restrict__ m_part) {
  da_part[o] = sums[0];
  dscale_part[o] = sums[1];
  dshift_part[o] = sums[2];
  mx_part[o] = sums[3];
  m_part[o] = sums[4];
}

// NCHW: block (row = b*RC + ch, chunk), grad_out's row (b, c) alongside; sums go to part[chunk_slot].
template <typename scalar_t, typename acc_t>
__global__ void RF_BOUNDS(Kernel::BackwardReduce)
    backward_reduce_nchw_kernel(const scalar_t* __restrict__ gout, const scalar_t* __restrict__ x,
                                const acc_t* __restrict__ att, const acc_t* __restrict__ scale,
                                const acc_t* __restrict__ shift, acc_t* __restrict__ da_part,
                                acc_t* __restrict__ dscale_part, acc_t* __restrict__ dshift_part,
                                acc_t* __restrict__ mx_part, acc_t* __restrict__ m_part, RowChunks g, Shape s,
                                bool vec) {
  __shared__ acc_t smem[5][kWarps];
  const ChunkSpan span = launch::chunk_span(g, blockIdx.x);
  const int64_t b = span.row / s.RC(), ch = span.row - b * s.RC();
  const acc_t a = att[span.row], sc = scale[ch], sh = shift[ch];
  const scalar_t* rows[2] = {x + span.row * g.len, gout + (b * s.C + ch % s.C) * g.len};
  acc_t sums[5] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0), acc_t(0)};  // d a, dscale, dshift, mx, m
  for_chunk_any<launch::unroll_of(Kernel::BackwardReduce), 2>(span, rows, vec, [&](const scalar_t(&v)[2]) {
    backward_reduce_terms<acc_t>(static_cast<acc_t>(v[0]), static_cast<acc_t>(v[1]), a, sc, sh, sums);
  });
  block_sum(sums, smem);
  if (threadIdx.x == 0)
    store_sums(sums, launch::chunk_slot(g, span.row, span.chunk, s.RC()), da_part, dscale_part, dshift_part,
               mx_part, m_part);
}

// channels_last: tile (b, run k, channels ch of R*C); sums go to part[b*K + k, ch].
template <typename scalar_t, typename acc_t>
__global__ void RF_BOUNDS(Kernel::BackwardReduce)
    backward_reduce_cl_kernel(const scalar_t* __restrict__ gout, const scalar_t* __restrict__ x,
                              const acc_t* __restrict__ att, const acc_t* __restrict__ scale,
                              const acc_t* __restrict__ shift, acc_t* __restrict__ da_part,
                              acc_t* __restrict__ dscale_part, acc_t* __restrict__ dshift_part,
                              acc_t* __restrict__ mx_part, acc_t* __restrict__ m_part, PositionRuns g, Shape s) {
  __shared__ acc_t smem[5][kTileRows][kTileCols];
  const RunThread rt = launch::run_thread(g, blockIdx.x, threadIdx.x);
  acc_t sums[5] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0), acc_t(0)};  // d a, dscale, dshift, mx, m
  if (rt.ch < g.N) {
    const acc_t a = att[rt.b * s.RC() + rt.ch], sc = scale[rt.ch], sh = shift[rt.ch];
    const scalar_t* cols[2] = {x + rt.b * g.P * g.N + rt.ch, gout + rt.b * g.P * s.C + rt.ch % s.C};
    const int64_t strides[2] = {g.N, s.C};
    constexpr int U = launch::unroll_of(Kernel::BackwardReduce);
    for_run<U, 2>(rt, cols, strides, [&](int64_t, int64_t, const scalar_t(&v)[2]) {
      backward_reduce_terms<acc_t>(static_cast<acc_t>(v[0]), static_cast<acc_t>(v[1]), a, sc, sh, sums);
    });
  }
  tile_rows_sum(sums, smem);
  if (rt.ty == 0 && rt.ch < g.N)
    store_sums(sums, launch::run_slot(g, rt), da_part, dscale_part, dshift_part, mx_part, m_part);
}

// Pass 2, elementwise: dx = scale*mk*(g*a + gg[b, c]) + coef_a*x + coef_b, with gg = grad_gap/(H*W) (B, C) and
// g = grad_out[b, c, p]. NCHW: block (row = b*RC + ch of x, chunk), every per-channel factor read once.
template <typename scalar_t, typename acc_t>
__global__ void RF_BOUNDS(Kernel::BackwardInput)
    backward_input_nchw_kernel(const scalar_t* __restrict__ gout, const acc_t* __restrict__ gg,
                               const scalar_t* __restrict__ x, const acc_t* __restrict__ att,
                               const acc_t* __restrict__ scale, const acc_t* __restrict__ shift,
                               const acc_t* __restrict__ coef_a, const acc_t* __restrict__ coef_b,
                               scalar_t* __restrict__ dx, RowChunks g, Shape s, bool vec) {
  const ChunkSpan span = launch::chunk_span(g, blockIdx.x);
  const int64_t b = span.row / s.RC(), ch = span.row - b * s.RC();
  const int64_t bc = b * s.C + ch % s.C;
  const acc_t a = att[span.row], sc = scale[ch], sh = shift[ch], ca = coef_a[ch], cb = coef_b[ch], ggv = gg[bc];
  const scalar_t* rows[2] = {x + span.row * g.len, gout + bc * g.len};
  scalar_t* drow = dx + span.row * g.len;
  const auto dx_of = [&](const scalar_t(&v)[2]) {
    return static_cast<scalar_t>(splat_backward_input_value<acc_t>(
        static_cast<acc_t>(v[0]), static_cast<acc_t>(v[1]), a, ggv, sc, sh, ca, cb));
  };
  for_chunk_any<launch::unroll_of(Kernel::BackwardInput), 2>(span, rows, vec, dx_of, drow);
}

// channels_last: tile (b, run k, channels ch of R*C).
template <typename scalar_t, typename acc_t>
__global__ void RF_BOUNDS(Kernel::BackwardInput)
    backward_input_cl_kernel(const scalar_t* __restrict__ gout, const acc_t* __restrict__ gg,
                             const scalar_t* __restrict__ x, const acc_t* __restrict__ att,
                             const acc_t* __restrict__ scale, const acc_t* __restrict__ shift,
                             const acc_t* __restrict__ coef_a, const acc_t* __restrict__ coef_b,
                             scalar_t* __restrict__ dx, PositionRuns g, Shape s) {
  const RunThread rt = launch::run_thread(g, blockIdx.x, threadIdx.x);
  if (rt.ch >= g.N) return;  // no barrier in this kernel
  const int64_t c = rt.ch % s.C;
  const acc_t a = att[rt.b * s.RC() + rt.ch], sc = scale[rt.ch], sh = shift[rt.ch], ca = coef_a[rt.ch],
              cb = coef_b[rt.ch], ggv = gg[rt.b * s.C + c];
  const int64_t base = rt.b * g.P * g.N + rt.ch;
  const scalar_t* cols[2] = {x + base, gout + rt.b * g.P * s.C + c};
  const int64_t strides[2] = {g.N, s.C};
  scalar_t* dcol = dx + base;
  constexpr int U = launch::unroll_of(Kernel::BackwardInput);
  for_run<U, 2>(rt, cols, strides, [&](int64_t, int64_t o, const scalar_t(&v)[2]) {
    dcol[o] = static_cast<scalar_t>(splat_backward_input_value<acc_t>(
        static_cast<acc_t>(v[0]), static_cast<acc_t>(v[1]), a, ggv, sc, sh, ca, cb));
  });
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

// The launch of `kernel` for x of shape s: the one function the launch model (launch_geometry.h) evaluates.
launch::LaunchPlan plan_of(Kernel kernel, bool cl, const Shape& s, int sms) {
  return launch::plan_launch(kernel, cl, s.B, s.R, s.C, s.P, sms);
}

// Calls f(std::integral_constant<int, R>) for the radices combine compiles in (launch::combine_radix_compiled),
// f(std::integral_constant<int, 0>) (the generic instance) for the others.
template <typename F>
void dispatch_radix(int64_t radix, F&& f) {
  static_assert(launch::combine_radix_compiled(1) && launch::combine_radix_compiled(2) &&
                launch::combine_radix_compiled(4) && !launch::combine_radix_compiled(3));
  switch (radix) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    default: f(std::integral_constant<int, 0>{}); break;
  }
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
  const launch::LaunchPlan plan = plan_of(Kernel::Pool, cl, s, sms);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "splat_pool_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor sc = params_as_acc<acc_t>(scale), sh = params_as_acc<acc_t>(shift);
    at::Tensor partial = at::empty({s.B * plan.parts, s.RC()}, x.options().dtype(acc_scalar_type<acc_t>()));
    const bool vec = rows_vectorized<Kernel::Pool, scalar_t>(s.P, x.data_ptr<scalar_t>());
    dispatch_flags(scale.has_value(), relu, [&](auto affine_c, auto relu_c) {
      constexpr bool kAffine = decltype(affine_c)::value, kRelu = decltype(relu_c)::value;
      if (!cl) {
        pool_nchw_kernel<scalar_t, acc_t, kAffine, kRelu><<<grid_of(plan.blocks), kThreads, 0, stream>>>(
            x.data_ptr<scalar_t>(), ptr_or_null<acc_t>(sc), ptr_or_null<acc_t>(sh), partial.data_ptr<acc_t>(),
            plan.rows, s.RC(), vec);
      } else {
        pool_cl_kernel<scalar_t, acc_t, kAffine, kRelu><<<grid_of(plan.blocks), kThreads, 0, stream>>>(
            x.data_ptr<scalar_t>(), ptr_or_null<acc_t>(sc), ptr_or_null<acc_t>(sh), partial.data_ptr<acc_t>(),
            plan.runs);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    // partial[b*K + k, r*C + c] == partial viewed as (B, K*R, C) at [b, k*R + r, c].
    column_sum_kernel<acc_t, scalar_t><<<grid_of(s.B * ceil_div(s.C, kTileCols)), kThreads, 0, stream>>>(
        partial.data_ptr<acc_t>(), gap.data_ptr<scalar_t>(), plan.parts * s.R, s.C,
        acc_t(1) / static_cast<acc_t>(s.P));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
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
  const launch::LaunchPlan plan = plan_of(Kernel::PoolBackward, cl, s, sms);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "splat_pool_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor sc = params_as_acc<acc_t>(scale), sh = params_as_acc<acc_t>(shift);
    const int64_t items = s.B * plan.parts;  // rows of the partial buffers
    const auto acc_options = x.options().dtype(acc_scalar_type<acc_t>());
    at::Tensor dsc_part = affine ? at::empty({items, s.RC()}, acc_options) : at::Tensor();
    at::Tensor dsh_part = affine ? at::empty({items, s.RC()}, acc_options) : at::Tensor();
    const bool vec = rows_vectorized<Kernel::PoolBackward, scalar_t>(s.P, x.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>());
    dispatch_flags(affine, relu, [&](auto affine_c, auto relu_c) {
      constexpr bool kAffine = decltype(affine_c)::value, kRelu = decltype(relu_c)::value;
      if (!cl) {
        pool_backward_nchw_kernel<scalar_t, acc_t, kAffine, kRelu><<<grid_of(plan.blocks), kThreads, 0, stream>>>(
            g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), ptr_or_null<acc_t>(sc), ptr_or_null<acc_t>(sh),
            dx.data_ptr<scalar_t>(), mutable_ptr_or_null<acc_t>(dsc_part), mutable_ptr_or_null<acc_t>(dsh_part),
            plan.rows, s, vec);
      } else {
        pool_backward_cl_kernel<scalar_t, acc_t, kAffine, kRelu><<<grid_of(plan.blocks), kThreads, 0, stream>>>(
            g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), ptr_or_null<acc_t>(sc), ptr_or_null<acc_t>(sh),
            dx.data_ptr<scalar_t>(), mutable_ptr_or_null<acc_t>(dsc_part), mutable_ptr_or_null<acc_t>(dsh_part),
            plan.runs, s);
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
  const launch::LaunchPlan plan = plan_of(Kernel::Combine, cl, s, sms);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "splat_combine_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor sc = params_as_acc<acc_t>(scale), sh = params_as_acc<acc_t>(shift);
    const at::Tensor att = attention_weights<scalar_t, acc_t>(logits, s, groups, sms, stream);
    dispatch_radix(s.R, [&](auto radix_c) {
      constexpr int kRadix = decltype(radix_c)::value;
      constexpr int U = launch::unroll_of(Kernel::Combine, kRadix > 0 ? kRadix : kMaxRadix + 1);
      const bool vec = rows_aligned<vec_of<scalar_t, U>()>(s.P, x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>());
      dispatch_flags(scale.has_value(), relu, [&](auto affine_c, auto relu_c) {
        constexpr bool kAffine = decltype(affine_c)::value, kRelu = decltype(relu_c)::value;
        if (!cl) {
          combine_nchw_kernel<scalar_t, acc_t, kRadix, kAffine, kRelu><<<grid_of(plan.blocks), kThreads, 0, stream>>>(
              x.data_ptr<scalar_t>(), att.data_ptr<acc_t>(), ptr_or_null<acc_t>(sc), ptr_or_null<acc_t>(sh),
              out.data_ptr<scalar_t>(), plan.rows, s, vec);
        } else {
          combine_cl_kernel<scalar_t, acc_t, kRadix, kAffine, kRelu><<<grid_of(plan.blocks), kThreads, 0, stream>>>(
              x.data_ptr<scalar_t>(), att.data_ptr<acc_t>(), ptr_or_null<acc_t>(sc), ptr_or_null<acc_t>(sh),
              out.data_ptr<scalar_t>(), plan.runs, s);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
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
  const launch::LaunchPlan plan = plan_of(Kernel::CombineBackward, cl, s, sms);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "splat_combine_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor sc = params_as_acc<acc_t>(scale), sh = params_as_acc<acc_t>(shift);
    const at::Tensor att = attention_weights<scalar_t, acc_t>(logits, s, groups, sms, stream);
    const int64_t items = s.B * plan.parts;  // rows of the partial buffers
    const auto acc_options = x.options().dtype(acc_scalar_type<acc_t>());
    at::Tensor da_part = at::empty({items, s.RC()}, acc_options);
    at::Tensor dsc_part = affine ? at::empty({items, s.RC()}, acc_options) : at::Tensor();
    at::Tensor dsh_part = affine ? at::empty({items, s.RC()}, acc_options) : at::Tensor();
    const bool vec =
        rows_vectorized<Kernel::CombineBackward, scalar_t>(s.P, x.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(),
                                                           dx.data_ptr<scalar_t>());
    dispatch_flags(affine, relu, [&](auto affine_c, auto relu_c) {
      constexpr bool kAffine = decltype(affine_c)::value, kRelu = decltype(relu_c)::value;
      if (!cl) {
        combine_backward_nchw_kernel<scalar_t, acc_t, kAffine, kRelu><<<grid_of(plan.blocks), kThreads, 0, stream>>>(
            g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), att.data_ptr<acc_t>(), ptr_or_null<acc_t>(sc),
            ptr_or_null<acc_t>(sh), dx.data_ptr<scalar_t>(), da_part.data_ptr<acc_t>(),
            mutable_ptr_or_null<acc_t>(dsc_part), mutable_ptr_or_null<acc_t>(dsh_part), plan.rows, s, vec);
      } else {
        combine_backward_cl_kernel<scalar_t, acc_t, kAffine, kRelu><<<grid_of(plan.blocks), kThreads, 0, stream>>>(
            g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), att.data_ptr<acc_t>(), ptr_or_null<acc_t>(sc),
            ptr_or_null<acc_t>(sh), dx.data_ptr<scalar_t>(), da_part.data_ptr<acc_t>(),
            mutable_ptr_or_null<acc_t>(dsc_part), mutable_ptr_or_null<acc_t>(dsh_part), plan.runs, s);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    attention_backward_kernel<scalar_t, acc_t><<<elementwise_grid(s.B * s.C, sms), kThreads, 0, stream>>>(
        att.data_ptr<acc_t>(), da_part.data_ptr<acc_t>(), dlogits.data_ptr<scalar_t>(), s, plan.parts,
        s.C / groups);
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
  const launch::LaunchPlan plan = plan_of(Kernel::BnStats, cl, s, sms);
  const int64_t items = s.B * plan.parts;  // rows of the partial buffers
  at::Tensor s1_part = at::empty({items, s.C}, x.options().dtype(at::kDouble)), s2_part = at::empty_like(s1_part);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "splat_bn_stats_cuda", [&] {
    if (!cl) {
      const bool vec = rows_vectorized<Kernel::BnStats, scalar_t>(s.P, x.data_ptr<scalar_t>());
      bn_stats_nchw_kernel<scalar_t><<<grid_of(plan.blocks), kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), s1_part.data_ptr<double>(), s2_part.data_ptr<double>(), plan.rows, s.C, vec);
    } else {
      bn_stats_cl_kernel<scalar_t><<<grid_of(plan.blocks), kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), s1_part.data_ptr<double>(), s2_part.data_ptr<double>(), plan.runs);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const auto finalize = [&](auto out_tag) {
      using out_t = decltype(out_tag);
      bn_stats_finalize_kernel<scalar_t, out_t><<<grid_of(ceil_div(s.C, kTileCols)), kThreads, 0, stream>>>(
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
  const launch::LaunchPlan plan = plan_of(Kernel::BackwardReduce, cl, s, sms);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "splat_backward_reduce_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor sc = params_as_acc<acc_t>(scale), sh = params_as_acc<acc_t>(shift);
    const at::Tensor att = attention_weights<scalar_t, acc_t>(logits, s, groups, sms, stream);
    const int64_t K = plan.parts;
    const int64_t items = s.B * K;  // rows of the partial buffers
    const auto acc_options = x.options().dtype(acc_scalar_type<acc_t>());
    at::Tensor da_part = at::empty({items, s.RC()}, acc_options);
    at::Tensor dsc_part = at::empty({items, s.RC()}, acc_options), dsh_part = at::empty({items, s.RC()}, acc_options);
    at::Tensor mx_part = at::empty({items, s.RC()}, acc_options), m_part = at::empty({items, s.RC()}, acc_options);
    if (!cl) {
      const bool vec =
          rows_vectorized<Kernel::BackwardReduce, scalar_t>(s.P, x.data_ptr<scalar_t>(), g.data_ptr<scalar_t>());
      backward_reduce_nchw_kernel<scalar_t, acc_t><<<grid_of(plan.blocks), kThreads, 0, stream>>>(
          g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), att.data_ptr<acc_t>(), sc.data_ptr<acc_t>(),
          sh.data_ptr<acc_t>(), da_part.data_ptr<acc_t>(), dsc_part.data_ptr<acc_t>(), dsh_part.data_ptr<acc_t>(),
          mx_part.data_ptr<acc_t>(), m_part.data_ptr<acc_t>(), plan.rows, s, vec);
    } else {
      backward_reduce_cl_kernel<scalar_t, acc_t><<<grid_of(plan.blocks), kThreads, 0, stream>>>(
          g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), att.data_ptr<acc_t>(), sc.data_ptr<acc_t>(),
          sh.data_ptr<acc_t>(), da_part.data_ptr<acc_t>(), dsc_part.data_ptr<acc_t>(), dsh_part.data_ptr<acc_t>(),
          mx_part.data_ptr<acc_t>(), m_part.data_ptr<acc_t>(), plan.runs, s);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    // mx[b, j] = sum over the sample's K chunks or runs of part[b*K + k, j]
    for (auto pair : {std::make_pair(&mx_part, &mx), std::make_pair(&m_part, &m)}) {
      column_sum_kernel<acc_t, acc_t><<<grid_of(s.B * ceil_div(s.RC(), kTileCols)), kThreads, 0, stream>>>(
          pair.first->data_ptr<acc_t>(), pair.second->data_ptr<acc_t>(), K, s.RC(), acc_t(1));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
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
  check_splat_common(x_in, coef_a, coef_b, radix, "coef_a", "coef_b");
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
  const launch::LaunchPlan plan = plan_of(Kernel::BackwardInput, cl, s, sms);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "splat_backward_input_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor sc = params_as_acc<acc_t>(scale), sh = params_as_acc<acc_t>(shift);
    const at::Tensor ca = params_as_acc<acc_t>(coef_a), cb = params_as_acc<acc_t>(coef_b);
    // grad_gap / (H*W) (B, C), as the CPU kernel computes it; read for every split r of channel c
    const at::Tensor gg = (grad_gap.to(acc_scalar_type<acc_t>()) / static_cast<double>(s.P)).contiguous();
    const at::Tensor att = attention_weights<scalar_t, acc_t>(logits, s, groups, sms, stream);
    if (!cl) {
      const bool vec =
          rows_vectorized<Kernel::BackwardInput, scalar_t>(s.P, x.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(),
                                                           dx.data_ptr<scalar_t>());
      backward_input_nchw_kernel<scalar_t, acc_t><<<grid_of(plan.blocks), kThreads, 0, stream>>>(
          g.data_ptr<scalar_t>(), gg.data_ptr<acc_t>(), x.data_ptr<scalar_t>(), att.data_ptr<acc_t>(),
          sc.data_ptr<acc_t>(), sh.data_ptr<acc_t>(), ca.data_ptr<acc_t>(), cb.data_ptr<acc_t>(),
          dx.data_ptr<scalar_t>(), plan.rows, s, vec);
    } else {
      backward_input_cl_kernel<scalar_t, acc_t><<<grid_of(plan.blocks), kThreads, 0, stream>>>(
          g.data_ptr<scalar_t>(), gg.data_ptr<acc_t>(), x.data_ptr<scalar_t>(), att.data_ptr<acc_t>(),
          sc.data_ptr<acc_t>(), sh.data_ptr<acc_t>(), ca.data_ptr<acc_t>(), cb.data_ptr<acc_t>(),
          dx.data_ptr<scalar_t>(), plan.runs, s);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
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
