// Launch geometry of the CUDA split-attention kernels, and the launch model that CI checks it with.
//
// Pure C++ (no torch, no CUDA headers): the CUDA launchers (ops/cuda/splat_kernel.cu) take every grid, chunk and
// run size from plan_launch(), the kernels take every index from the __host__ __device__ mapping functions below,
// and tests/ops/cuda_harness/launch_model.cpp calls the very same functions on the CPU, both to print the launch
// model (blocks, bytes in flight per SM, bytes moved) at the ResNeSt-101-D8 stage shapes and to enumerate whole
// grids of real launches ("which elements does (block, thread, step) touch").
//
// Design (house style habit 12), for an H100 (132 SMs) and an A100 (108 SMs):
//   * Blocks of kThreads threads under __launch_bounds__(kThreads, kMinBlocksPerSm): at most 64 registers, so
//     kMinBlocksPerSm blocks are resident per SM whatever the kernel; the model counts only that guaranteed
//     occupancy. Small blocks keep the work per block small, so even batch-1 launches at 512x512 have several
//     blocks per SM, each thread with a full step of loads.
//   * NCHW: a row (one channel of one sample, P = H*W contiguous values) is cut into chunks (whole multiples of
//     half a block step); a block handles one chunk of one row, so a launch has rows * chunks blocks, aiming at
//     kTargetBlocksPerSm blocks per SM (two waves of the guaranteed occupancy) as long as every thread keeps a
//     full step of loads, and cutting to half steps only where full steps leave fewer than kGoalBlocksPerSm.
//   * channels_last: a block is a tile of kTileCols channels x kTileRows position lanes (a warp reads 32
//     contiguous channels of one position); a sample's positions are cut into K runs, for the same block target.
//   * Every thread computes its trip count first and issues kUnroll independent loads per step (kUnroll / S per
//     input stream for S streams; 128-bit loads on NCHW rows when the rows are aligned), then uses them:
//     kMinBlocksPerSm * kThreads * kUnroll * element size = 16 KB per SM in flight for 16-bit types (Little's
//     law on an H100: ~3.35 TB/s x ~600 ns / 132 SMs ~ 16.5 KB), 32 KB for fp32. A tensor smaller than that per
//     SM (bf16 y of 1x512x512 at layer2: 15.5 KB per H100 SM) is in flight whole.
//   * Reductions write one partial sum per (sample, chunk or run, channel) to its own slot, and a small finishing
//     pass adds them in a fixed order: no atomics, results are bit-reproducible run to run.
//   * No per-element integer division: a block decodes its (row, chunk) or (sample, run, tile) once; elements are
//     reached by additions.
#pragma once

#include <algorithm>
#include <cstdint>

#include "ops/splat_math.h"  // RF_HOST_DEVICE

namespace resnest_fast {
namespace launch {

constexpr int kThreads = 128;         // every kernel: 4 warps, so that batch-1 launches still have many blocks
constexpr int kWarps = kThreads / 32;
constexpr int kMinBlocksPerSm = 8;    // __launch_bounds__(kThreads, 8): <= 64 registers, 8 blocks resident per SM
constexpr int kTargetBlocksPerSm = 2 * kMinBlocksPerSm;  // grids aim at two waves of the guaranteed occupancy,
constexpr int kGoalBlocksPerSm = 4;   // and must have at least this many blocks per SM (before halving steps)
constexpr int kUnroll = 8;            // independent loads per thread per step, over all its input streams
constexpr int kTileCols = 32;         // channels_last: a warp spans 32 consecutive channels ...
constexpr int kTileRows = kThreads / kTileCols;  // ... and each warp walks its own positions
constexpr int kVecBytes = 16;         // 128-bit loads

RF_HOST_DEVICE constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Values per 128-bit load for an element of `elem_size` bytes (1 when a vector would not divide kUnroll).
RF_HOST_DEVICE constexpr int vec_width(int elem_size) {
  return (kVecBytes / elem_size >= 1 && kUnroll % (kVecBytes / elem_size) == 0) ? kVecBytes / elem_size : 1;
}

// ------------------------------------------------------------------------------------------------------ NCHW

// Loads per input stream per step for a kernel loading `streams` streams together: kUnroll in flight in all.
RF_HOST_DEVICE constexpr int unroll_for(int streams) { return kUnroll / streams >= 1 ? kUnroll / streams : 1; }

// combine loads its R splits at once: the radices compiled in take kUnroll / R loads per split per step; any
// other radix <= kMaxRadix runs a generic kernel that walks the splits one after another within a step, kUnroll
// loads of one split in flight at a time.
RF_HOST_DEVICE constexpr bool combine_radix_compiled(int64_t radix) { return radix == 1 || radix == 2 || radix == 4; }
RF_HOST_DEVICE constexpr int combine_unroll(int64_t radix) {
  return combine_radix_compiled(radix) ? kUnroll / static_cast<int>(radix) : kUnroll;
}

// `rows` contiguous rows of `len` values, each cut into `chunks` chunks of `chunk_len` values (the last may be
// shorter); a block steps through its chunk kThreads * unroll values at a time. Block `row * chunks + chunk`
// handles one chunk of one row.
struct RowChunks {
  int64_t rows, len, chunks, chunk_len;
  int unroll;
  RF_HOST_DEVICE int64_t blocks() const { return rows * chunks; }
  RF_HOST_DEVICE int64_t step() const { return int64_t(kThreads) * unroll; }
};

// How many parts to cut each of `rows` rows into: as many as the block target asks for, as long as every thread
// keeps a full step of loads (at most full_cap parts); if that leaves fewer than kGoalBlocksPerSm blocks per SM,
// half steps (at most half_cap parts).
inline int64_t parts_for(int64_t rows, int sms, int64_t full_cap, int64_t half_cap) {
  rows = std::max<int64_t>(rows, 1);
  const int64_t want = std::max<int64_t>(1, ceil_div(int64_t(kTargetBlocksPerSm) * sms, rows));
  const int64_t full = std::min(want, std::max<int64_t>(1, full_cap));
  if (rows * full >= int64_t(kGoalBlocksPerSm) * sms) return full;
  return std::max(full, std::min(want, std::max<int64_t>(1, half_cap)));
}

// NCHW chunks are whole multiples of half a step, so 128-bit vectors stay aligned; a chunk shorter than a step is
// one predicated tail step (its loads still issued together).
RF_HOST_DEVICE constexpr int64_t chunk_quantum(int unroll) {
  return int64_t(kThreads) * (unroll >= 2 ? unroll / 2 : 1);
}

inline RowChunks row_chunks(int64_t rows, int64_t len, int sms, int unroll = kUnroll) {
  const int64_t quantum = chunk_quantum(unroll);
  const int64_t chunks = parts_for(rows, sms, len / (int64_t(kThreads) * unroll), ceil_div(len, quantum));
  const int64_t chunk_len = ceil_div(ceil_div(std::max<int64_t>(len, 1), chunks), quantum) * quantum;
  return {rows, len, std::max<int64_t>(1, ceil_div(len, chunk_len)), chunk_len, unroll};
}

// The values [begin, end) of a row that one block handles: `full_steps` whole steps of g.step() values, then a
// tail step of fewer values.
struct ChunkSpan {
  int64_t row, chunk, begin, end, full_steps;
};

RF_HOST_DEVICE ChunkSpan chunk_span(const RowChunks& g, int64_t block) {
  const int64_t row = block / g.chunks;  // once per block
  const int64_t chunk = block - row * g.chunks;
  const int64_t begin = chunk * g.chunk_len;
  const int64_t end = begin + g.chunk_len < g.len ? begin + g.chunk_len : g.len;
  return {row, chunk, begin, end, (end - begin) / g.step()};
}

// Position in the row of the u-th value (u < U) that thread t loads in full step `step` of a kernel unrolled U
// times, with loads of V values: thread t's V-value vectors are V*t apart, so a warp's load is one contiguous
// run of 32*V values.
template <int U, int V>
RF_HOST_DEVICE int64_t chunk_index(const ChunkSpan& s, int64_t step, int u, int t) {
  static_assert(U % V == 0, "a step holds whole vectors");
  return s.begin + step * (int64_t(kThreads) * U) + int64_t(u / V) * (int64_t(kThreads) * V) + int64_t(t) * V +
         (u % V);
}

// Position of the u-th value of thread t in the tail step (scalar loads); a value only when < s.end.
template <int U>
RF_HOST_DEVICE int64_t tail_index(const ChunkSpan& s, int u, int t) {
  return s.begin + s.full_steps * (int64_t(kThreads) * U) + int64_t(u) * kThreads + t;
}

// Partial sums of row (b*N + ch), chunk k: slot (b*chunks + k)*N + ch, so the partial buffer reads as
// (B*chunks, N), the layout of the channels_last runs: one finishing pass serves both layouts.
RF_HOST_DEVICE int64_t chunk_slot(const RowChunks& g, int64_t row, int64_t chunk, int64_t N) {
  const int64_t b = row / N;
  return (b * g.chunks + chunk) * N + (row - b * N);
}

// -------------------------------------------------------------------------------------------- channels_last

// B samples of P positions x N channels (channel fastest). Block ((b*K + k)*tiles + tile) covers channels
// [tile*kTileCols, +kTileCols) of positions [k*run_len, min(P, (k+1)*run_len)).
struct PositionRuns {
  int64_t B, P, N, tiles, K, run_len;
  int unroll;
  RF_HOST_DEVICE int64_t blocks() const { return B * K * tiles; }
};

inline PositionRuns position_runs(int64_t B, int64_t P, int64_t N, int sms, int unroll = kUnroll) {
  const int64_t tiles = std::max<int64_t>(1, ceil_div(N, kTileCols));
  const int64_t K0 = parts_for(B * tiles, sms, P / (int64_t(unroll) * kTileRows),
                               P / (int64_t(std::max(1, unroll / 2)) * kTileRows));
  const int64_t run_len = ceil_div(std::max<int64_t>(P, 1), K0);
  return {B, P, N, tiles, std::max<int64_t>(1, ceil_div(P, run_len)), run_len, unroll};
}

// What thread t of a channels_last block reads: channel ch (>= N in the last tile: no work) at positions
// p_begin + j*kTileRows for j < count, of sample b; item = b*K + k is the row of its partial slot.
struct RunThread {
  int64_t item, b, ch, p_begin, count;
  int ty;
};

RF_HOST_DEVICE RunThread run_thread(const PositionRuns& g, int64_t block, int t) {
  const int64_t item = block / g.tiles;  // once per thread
  const int64_t tile = block - item * g.tiles;
  const int64_t b = item / g.K;
  const int64_t k = item - b * g.K;
  const int tx = t % kTileCols, ty = t / kTileCols;
  const int64_t p_begin = k * g.run_len + ty;
  const int64_t end = (k + 1) * g.run_len < g.P ? (k + 1) * g.run_len : g.P;
  const int64_t count = end > p_begin ? (end - p_begin + kTileRows - 1) / kTileRows : 0;
  return {item, b, tile * kTileCols + tx, p_begin, count, ty};
}

// Position of the j-th value of the thread (j < count): full steps are j = step*unroll + u.
RF_HOST_DEVICE int64_t run_position(const RunThread& r, int64_t j) { return r.p_begin + j * kTileRows; }

RF_HOST_DEVICE int64_t run_slot(const PositionRuns& g, const RunThread& r) { return r.item * g.N + r.ch; }

// ------------------------------------------------------------------------------------------- launch plans

enum class Kernel { Pool, PoolBackward, Combine, CombineBackward, BnStats, BackwardReduce, BackwardInput };
constexpr Kernel kAllKernels[] = {Kernel::Pool,           Kernel::PoolBackward, Kernel::Combine,
                                  Kernel::CombineBackward, Kernel::BnStats,      Kernel::BackwardReduce,
                                  Kernel::BackwardInput};

inline const char* kernel_name(Kernel k) {
  switch (k) {
    case Kernel::Pool: return "pool";
    case Kernel::PoolBackward: return "pool_backward";
    case Kernel::Combine: return "combine";
    case Kernel::CombineBackward: return "combine_backward";
    case Kernel::BnStats: return "bn_stats";
    case Kernel::BackwardReduce: return "backward_reduce";
    case Kernel::BackwardInput: return "backward_input";
  }
  return "?";
}

// The main pass of one op for x of shape (B, R*C, H, W), P = H*W; for bn_stats, R*C is x's channel count.
// Exactly one of rows (NCHW) and runs (channels_last) is used. `parts` is the number of partial rows per
// sample (chunks or K), 1 for the elementwise kernels.
struct LaunchPlan {
  Kernel kernel;
  bool channels_last;
  int unroll;         // loads per stream per thread per step: the kernel's compile-time unroll
  RowChunks rows;
  PositionRuns runs;
  int64_t blocks, parts;
  int load_streams;   // input streams whose loads are in flight together (x, grad_out, or the R splits of x)
  int reduced_sums;   // partial sums per slot (0: elementwise, no finishing pass)
  int min_blocks_per_sm;  // the kernel's __launch_bounds__ guarantee
};

// Input streams loaded together by the main pass of a kernel (combine: its R splits).
RF_HOST_DEVICE constexpr int load_streams(Kernel k, int64_t radix) {
  return k == Kernel::Combine ? (combine_radix_compiled(radix) ? static_cast<int>(radix) : 1)
         : (k == Kernel::CombineBackward || k == Kernel::BackwardReduce || k == Kernel::BackwardInput) ? 2
                                                                                                       : 1;
}

// The compile-time unroll of a kernel's main loop (loads per stream per step); combine's depends on its radix.
// The generic (radix not compiled in) channels_last combine keeps half a step: with kUnroll it spills on sm_80.
RF_HOST_DEVICE constexpr int unroll_of(Kernel k, int64_t radix = 1, bool channels_last = false) {
  return k != Kernel::Combine                               ? unroll_for(load_streams(k, radix))
         : (channels_last && !combine_radix_compiled(radix)) ? kUnroll / 2
                                                              : combine_unroll(radix);
}

RF_HOST_DEVICE constexpr int min_blocks_per_sm(Kernel) { return kMinBlocksPerSm; }

// Channels of the main pass: combine's block covers an output channel (all R splits), the others a channel of x.
inline LaunchPlan plan_launch(Kernel kernel, bool channels_last, int64_t B, int64_t R, int64_t C, int64_t P,
                              int sms) {
  const bool per_output = kernel == Kernel::Combine;
  const int64_t N = per_output ? C : R * C;
  LaunchPlan p{};
  p.kernel = kernel;
  p.channels_last = channels_last;
  p.unroll = unroll_of(kernel, R, channels_last);
  if (channels_last) {
    p.runs = position_runs(B, P, N, sms, p.unroll);
    p.blocks = p.runs.blocks();
    p.parts = p.runs.K;
  } else {
    p.rows = row_chunks(B * N, P, sms, p.unroll);
    p.blocks = p.rows.blocks();
    p.parts = p.rows.chunks;
  }
  p.min_blocks_per_sm = min_blocks_per_sm(kernel);
  p.load_streams = load_streams(kernel, R);
  switch (kernel) {
    case Kernel::Pool: p.reduced_sums = 1; break;
    case Kernel::PoolBackward: p.reduced_sums = 2; break;
    case Kernel::Combine: p.reduced_sums = 0; break;
    case Kernel::CombineBackward: p.reduced_sums = 3; break;
    case Kernel::BnStats: p.reduced_sums = 2; break;
    case Kernel::BackwardReduce: p.reduced_sums = 5; break;
    case Kernel::BackwardInput: p.reduced_sums = 0; break;
  }
  return p;
}

// ------------------------------------------------------------------------------------------- launch model

struct LaunchModel {
  int64_t blocks;
  double blocks_per_sm;          // blocks / SMs
  double bytes_in_flight_per_sm; // resident blocks (at most min_blocks_per_sm) x loads in flight per block
  double bytes_loaded_per_sm;    // what the launch loads in all, per SM: the bound of the above on small tensors
  double bytes_moved;            // main pass: loads and stores of x-sized tensors, plus the partial sums
};

// elem_size: bytes of x's dtype; acc_size: bytes of the partial sums (8 for bn_stats and fp64, else 4).
inline LaunchModel model_launch(const LaunchPlan& p, int64_t B, int64_t R, int64_t C, int64_t P, int elem_size,
                                int acc_size, int sms) {
  LaunchModel m{};
  m.blocks = p.blocks;
  m.blocks_per_sm = double(p.blocks) / sms;
  const double resident = std::min<double>(p.min_blocks_per_sm, m.blocks_per_sm);
  // a thread has at most one value per kThreads of its chunk or run to load
  const int64_t per_thread =
      p.channels_last ? ceil_div(p.runs.run_len, kTileRows) : ceil_div(p.rows.chunk_len, kThreads);
  const double loads = double(std::min<int64_t>(p.unroll, per_thread));
  m.bytes_in_flight_per_sm = resident * kThreads * p.load_streams * loads * elem_size;
  const double x = double(B) * R * C * P * elem_size, g = double(B) * C * P * elem_size;
  const bool reads_gout = p.kernel == Kernel::CombineBackward || p.kernel == Kernel::BackwardReduce ||
                          p.kernel == Kernel::BackwardInput;
  m.bytes_loaded_per_sm = (x + (reads_gout ? R * g : 0.0)) / sms;
  double moved = 0;
  switch (p.kernel) {
    case Kernel::Pool: moved = x; break;
    case Kernel::PoolBackward: moved = 2 * x; break;                 // x, dx
    case Kernel::Combine: moved = x + g; break;                      // x, out
    case Kernel::CombineBackward: moved = 2 * x + R * g; break;      // x, dx, grad_out once per split
    case Kernel::BnStats: moved = x; break;
    case Kernel::BackwardReduce: moved = x + R * g; break;
    case Kernel::BackwardInput: moved = 2 * x + R * g; break;
  }
  const int64_t N = p.kernel == Kernel::Combine ? C : R * C;
  m.bytes_moved = moved + double(p.reduced_sums) * B * p.parts * N * acc_size;
  return m;
}

}  // namespace launch
}  // namespace resnest_fast
