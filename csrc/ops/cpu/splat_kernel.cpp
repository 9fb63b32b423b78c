// CPU kernels of the fused split-attention ops.
//
// Each op makes one pass over x: the activation relu(x*scale + shift) is recomputed from x wherever it is
// needed instead of being stored, the per-(sample, channel) attention weights are computed once from the
// logits, and every sum is accumulated in at::opmath_type (float for float/half/bfloat16, double for double).
// Two dense layouts are read in place:
//   NCHW (contiguous): one work item per (sample, channel); its radix rows are contiguous runs of H*W values.
//   channels_last:     one work item per (sample, run of positions); each position holds radix*C contiguous
//                      values, and reductions over positions go to per-item partial buffers that are summed at
//                      the end (deterministic: the split into items depends only on the shape). A run is
//                      P/4 positions long on one thread: one fp32 accumulator per channel along it would err
//                      12-40x the reference at 128x128 to 256x256, so runs are summed in levels (sum_run_cascaded).
// Inner loops are `omp simd` loops over contiguous memory, at::parallel_for splits the items over torch's OpenMP
// threads (setup.py compiles with -fopenmp where torch uses OpenMP: the header template is serial otherwise), and the
// bool options (affine, relu) are template parameters so the loops have no branches.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "ops/cpu/cpu_utils.h"
#include "ops/splat_checks.h"
#include "ops/splat_host.h"
#include "ops/splat_math.h"

namespace resnest_fast {
namespace {

constexpr int64_t kChunk = 512;         // NCHW combine: positions accumulated in a stack buffer at once
constexpr int64_t kGrainElems = 32768;  // elements of x per parallel task, at least
constexpr int64_t kLanes = 64;          // NCHW pool: partial sums kept apart (4 AVX-512 / 8 AVX2 registers)
constexpr int64_t kFanIn = 16;          // channels_last run sums: partial sums merged into the next level 16 at a time
constexpr int kLevels = 3;              // channels_last run sums: levels before the item's accumulators


// Stores an fp32 (or double) result as scalar_t. c10's float -> bfloat16 conversion branches on NaN inside a
// call the compiler does not vectorise, which made every bfloat16 write loop scalar. This is the same
// round-to-nearest-even, NaN -> 0x7FC0 included, as straight-line integer code that `omp simd` vectorises; other
// types keep static_cast.
template <typename scalar_t, typename acc_t>
inline scalar_t splat_store(acc_t v) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    const float f = static_cast<float>(v);
    uint32_t u;
    std::memcpy(&u, &f, sizeof(u));
    const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    return c10::BFloat16(static_cast<uint16_t>(f != f ? 0x7FC0u : rounded), c10::BFloat16::from_bits());
  } else {
    return static_cast<scalar_t>(v);
  }
}

int64_t grain_for(int64_t elems_per_item) {
  return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, elems_per_item));
}

// channels_last: how many runs of positions each sample is cut into, so that B * runs gives every thread work.
int64_t runs_per_sample(int64_t B, int64_t P) {
  const int64_t want = std::max<int64_t>(1, (4 * at::get_num_threads() + B - 1) / B);
  return std::max<int64_t>(1, std::min<int64_t>(want, P / 16));
}

// N sums over one channels_last run, positions [p_begin, p_end), vectorised across channels: N accumulators of n
// values each (the item's slots of the partial buffers, added to); add_position(p, part) adds position p's terms
// into part[0..N). Partial sums of kFanIn positions merge kFanIn at a time into the next level (16, 256, 4096
// positions), as torch's cascaded sums do, the last level into the accumulators: each fp32 partial sum takes at most
// kFanIn terms (kFanIn positions at the first level), which keeps the error near the reference's. The merges, n
// adds per kFanIn positions, stay in cache. The order depends only on the run.
template <typename acc_t, int N>
struct CascadeScratch {
  // kLevels*N partial sums of n values, each on its own 64-byte lines: a first level that straddles lines makes
  // every vector read-modify-write of the hot loop a split access.
  static constexpr int64_t kLine = 64 / sizeof(acc_t);
  explicit CascadeScratch(int64_t n) : stride((n + kLine - 1) / kLine * kLine), buf(kLevels * N * stride + kLine) {
    const uintptr_t p = reinterpret_cast<uintptr_t>(buf.data());
    base = buf.data() + ((64 - p % 64) % 64) / sizeof(acc_t);
  }
  acc_t* at(int level, int i) { return base + (level * N + i) * stride; }
  int64_t stride;
  std::vector<acc_t> buf;
  acc_t* base;
};

template <int N, typename acc_t, typename F>
RF_ALWAYS_INLINE inline void sum_run_cascaded(int64_t p_begin, int64_t p_end, int64_t n, acc_t* const (&acc)[N],
                                              CascadeScratch<acc_t, N>& scratch, const F& add_position) {
  for (int l = 0; l < kLevels; ++l)
    for (int i = 0; i < N; ++i) std::fill(scratch.at(l, i), scratch.at(l, i) + n, acc_t(0));
  const auto move_down = [&](int l) RF_ALWAYS_INLINE {
    for (int i = 0; i < N; ++i) {
      acc_t* src = scratch.at(l, i);
      acc_t* dst = l + 1 < kLevels ? scratch.at(l + 1, i) : acc[i];
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        dst[j] += src[j];
        src[j] = acc_t(0);
      }
    }
  };
  acc_t* part[N];
  for (int i = 0; i < N; ++i) part[i] = scratch.at(0, i);
  int64_t held[kLevels] = {};
  for (int64_t b0 = p_begin; b0 < p_end; b0 += kFanIn) {
    const int64_t b_end = std::min(p_end, b0 + kFanIn);
    for (int64_t p = b0; p < b_end; ++p) add_position(p, part);
    for (int l = 0; l < kLevels; ++l) {
      move_down(l);
      if (l + 1 == kLevels || ++held[l + 1] < kFanIn) break;
      held[l + 1] = 0;
    }
  }
  for (int l = 1; l < kLevels; ++l) move_down(l);
}

// Attention weights (B, R, C) in acc_t from logits (B, R*C) read as [groups][radix][C/groups].
template <typename scalar_t, typename acc_t>
std::vector<acc_t> attention_weights(const at::Tensor& logits, const Shape& s, int64_t groups) {
  std::vector<acc_t> att(s.B * s.RC());
  const scalar_t* l = logits.data_ptr<scalar_t>();
  const int64_t cpg = s.C / groups;
  parallel_items(0, s.B * s.C, grain_for(s.R * 64), [&](int64_t begin, int64_t end) RF_ALWAYS_INLINE {
    acc_t a[kMaxRadix];
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / s.C, c = bc % s.C;
      splat_attention<acc_t>(l + b * s.RC(), c, s.R, cpg, a);
      for (int64_t r = 0; r < s.R; ++r) att[(b * s.R + r) * s.C + c] = a[r];
    }
  });
  return att;
}

// ------------------------------------------------------------------------------------------------ pool forward

template <typename scalar_t, typename acc_t, bool kAffine, bool kRelu>
void pool_forward(const scalar_t* x, const acc_t* scale, const acc_t* shift, scalar_t* gap, const Shape& s,
                  bool channels_last) {
  const acc_t inv_p = acc_t(1) / static_cast<acc_t>(s.P);
  if (!channels_last) {
    parallel_items(0, s.B * s.C, grain_for(s.R * s.P), [&](int64_t begin, int64_t end) RF_ALWAYS_INLINE {
      for (int64_t bc = begin; bc < end; ++bc) {
        const int64_t b = bc / s.C, c = bc % s.C;
        acc_t total = 0;
        for (int64_t r = 0; r < s.R; ++r) {
          const int64_t ch = r * s.C + c;
          const scalar_t* row = x + (b * s.RC() + ch) * s.P;
          const acc_t sc = kAffine ? scale[ch] : acc_t(1), sh = kAffine ? shift[ch] : acc_t(0);
          // kLanes independent partial sums: a single vector accumulator would make every add wait for the
          // previous one (3-4 cycles), which held this loop to about half of what memory delivers.
          acc_t lanes[kLanes] = {};
          int64_t i = 0;
          for (; i + kLanes <= s.P; i += kLanes) {
#pragma omp simd
            for (int64_t j = 0; j < kLanes; ++j) {
              lanes[j] += splat_act<acc_t, kRelu>(splat_pre<acc_t, kAffine>(static_cast<acc_t>(row[i + j]), sc, sh));
            }
          }
          acc_t sum = 0;
          for (; i < s.P; ++i) {
            sum += splat_act<acc_t, kRelu>(splat_pre<acc_t, kAffine>(static_cast<acc_t>(row[i]), sc, sh));
          }
          for (int64_t j = 0; j < kLanes; ++j) sum += lanes[j];
          total += sum;
        }
        gap[bc] = splat_store<scalar_t, acc_t>(total * inv_p);
      }
    });
    return;
  }
  const int64_t K = runs_per_sample(s.B, s.P);
  const int64_t run = (s.P + K - 1) / K;
  std::vector<acc_t> partial(s.B * K * s.C, acc_t(0));
  parallel_items(0, s.B * K, 1, [&](int64_t begin, int64_t end) RF_ALWAYS_INLINE {
    CascadeScratch<acc_t, 1> scratch(s.C);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / K, k = item % K;
      const auto add_position = [&](int64_t p, acc_t* const (&sums)[1]) RF_ALWAYS_INLINE {
        const scalar_t* row = x + (b * s.P + p) * s.RC();
        acc_t* sum = sums[0];
        for (int64_t r = 0; r < s.R; ++r) {
          const scalar_t* xr = row + r * s.C;
          const acc_t* sc = kAffine ? scale + r * s.C : nullptr;
          const acc_t* sh = kAffine ? shift + r * s.C : nullptr;
#pragma omp simd
          for (int64_t c = 0; c < s.C; ++c) {
            sum[c] += splat_act<acc_t, kRelu>(splat_pre<acc_t, kAffine>(
                static_cast<acc_t>(xr[c]), kAffine ? sc[c] : acc_t(1), kAffine ? sh[c] : acc_t(0)));
          }
        }
      };
      acc_t* const acc[1] = {partial.data() + item * s.C};
      sum_run_cascaded<1>(k * run, std::min(s.P, (k + 1) * run), s.C, acc, scratch, add_position);
    }
  });
  for (int64_t b = 0; b < s.B; ++b) {
    for (int64_t c = 0; c < s.C; ++c) {
      acc_t total = 0;
      for (int64_t k = 0; k < K; ++k) total += partial[(b * K + k) * s.C + c];
      gap[b * s.C + c] = splat_store<scalar_t, acc_t>(total * inv_p);
    }
  }
}

// ----------------------------------------------------------------------------------------------- pool backward

template <typename scalar_t, typename acc_t, bool kAffine, bool kRelu>
void pool_backward(const scalar_t* grad_gap, const scalar_t* x, const acc_t* scale, const acc_t* shift,
                   scalar_t* dx, acc_t* dscale_part, acc_t* dshift_part, const Shape& s, bool channels_last,
                   int64_t K) {
  // d gap[b,c] / d act[b, r*C+c, p] = 1/P; dscale/dshift partial sums go to (items, R*C) buffers.
  const acc_t inv_p = acc_t(1) / static_cast<acc_t>(s.P);
  if (!channels_last) {
    parallel_items(0, s.B * s.RC(), grain_for(s.P), [&](int64_t begin, int64_t end) RF_ALWAYS_INLINE {
      for (int64_t brc = begin; brc < end; ++brc) {
        const int64_t b = brc / s.RC(), ch = brc % s.RC(), c = ch % s.C;
        const acc_t g = static_cast<acc_t>(grad_gap[b * s.C + c]) * inv_p;
        const acc_t sc = kAffine ? scale[ch] : acc_t(1), sh = kAffine ? shift[ch] : acc_t(0);
        const scalar_t* row = x + brc * s.P;
        scalar_t* drow = dx + brc * s.P;
        acc_t dsc = 0, dsh = 0;
#pragma omp simd reduction(+ : dsc, dsh)
        for (int64_t i = 0; i < s.P; ++i) {
          const acc_t v = static_cast<acc_t>(row[i]);
          const acc_t d = splat_times_act_grad<acc_t, kRelu>(g, splat_pre<acc_t, kAffine>(v, sc, sh));
          drow[i] = splat_store<scalar_t, acc_t>(kAffine ? d * sc : d);
          dsc += d * v;
          dsh += d;
        }
        if (kAffine) {
          dscale_part[brc] = dsc;
          dshift_part[brc] = dsh;
        }
      }
    });
    return;
  }
  const int64_t run = (s.P + K - 1) / K;
  // g expanded to (B, R*C) so the inner loop runs over contiguous channels.
  std::vector<acc_t> g(s.B * s.RC());
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t ch = 0; ch < s.RC(); ++ch)
      g[b * s.RC() + ch] = static_cast<acc_t>(grad_gap[b * s.C + ch % s.C]) * inv_p;
  parallel_items(0, s.B * K, 1, [&](int64_t begin, int64_t end) RF_ALWAYS_INLINE {
    CascadeScratch<acc_t, 2> scratch(kAffine ? s.RC() : 0);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / K, k = item % K;
      const acc_t* gb = g.data() + b * s.RC();
      const auto add_position = [&](int64_t p, acc_t* const (&sums)[2]) RF_ALWAYS_INLINE {
        acc_t* dsc = sums[0];
        acc_t* dsh = sums[1];
        const scalar_t* row = x + (b * s.P + p) * s.RC();
        scalar_t* drow = dx + (b * s.P + p) * s.RC();
#pragma omp simd
        for (int64_t ch = 0; ch < s.RC(); ++ch) {
          const acc_t v = static_cast<acc_t>(row[ch]);
          const acc_t sc = kAffine ? scale[ch] : acc_t(1);
          const acc_t d = splat_times_act_grad<acc_t, kRelu>(
              gb[ch], splat_pre<acc_t, kAffine>(v, sc, kAffine ? shift[ch] : acc_t(0)));
          drow[ch] = splat_store<scalar_t, acc_t>(kAffine ? d * sc : d);
          if (kAffine) {
            dsc[ch] += d * v;
            dsh[ch] += d;
          }
        }
      };
      const int64_t p_begin = k * run, p_end = std::min(s.P, (k + 1) * run);
      if constexpr (kAffine) {
        acc_t* const acc[2] = {dscale_part + item * s.RC(), dshift_part + item * s.RC()};
        sum_run_cascaded<2>(p_begin, p_end, s.RC(), acc, scratch, add_position);
      } else {
        acc_t* const none[2] = {nullptr, nullptr};
        for (int64_t p = p_begin; p < p_end; ++p) add_position(p, none);
      }
    }
  });
}

// --------------------------------------------------------------------------------------------- combine forward

template <typename scalar_t, typename acc_t, bool kAffine, bool kRelu>
void combine_forward(const scalar_t* x, const acc_t* att, const acc_t* scale, const acc_t* shift, scalar_t* out,
                     const Shape& s, bool channels_last) {
  if (!channels_last) {
    // radix 1, 2 and 4 (the ones ResNeSt uses) get a loop with the splits unrolled that writes the output
    // directly; any other radix accumulates a chunk in a stack buffer.
    auto direct = [&](auto radix_c) RF_ALWAYS_INLINE {
      constexpr int64_t kR = decltype(radix_c)::value;
      parallel_items(0, s.B * s.C, grain_for(kR * s.P), [&](int64_t begin, int64_t end) RF_ALWAYS_INLINE {
        for (int64_t bc = begin; bc < end; ++bc) {
          const int64_t b = bc / s.C, c = bc % s.C;
          const scalar_t* rows[kR];
          acc_t a[kR], sc[kR], sh[kR];
          for (int64_t r = 0; r < kR; ++r) {
            const int64_t ch = r * s.C + c;
            rows[r] = x + (b * s.RC() + ch) * s.P;
            a[r] = att[b * s.RC() + ch];
            sc[r] = kAffine ? scale[ch] : acc_t(1);
            sh[r] = kAffine ? shift[ch] : acc_t(0);
          }
          scalar_t* orow = out + bc * s.P;
#pragma omp simd
          for (int64_t i = 0; i < s.P; ++i) {
            acc_t v = 0;
            for (int64_t r = 0; r < kR; ++r)
              v += a[r] * splat_act<acc_t, kRelu>(splat_pre<acc_t, kAffine>(static_cast<acc_t>(rows[r][i]), sc[r], sh[r]));
            orow[i] = splat_store<scalar_t, acc_t>(v);
          }
        }
      });
    };
    if (s.R == 1) return direct(std::integral_constant<int64_t, 1>{});
    if (s.R == 2) return direct(std::integral_constant<int64_t, 2>{});
    if (s.R == 4) return direct(std::integral_constant<int64_t, 4>{});
    parallel_items(0, s.B * s.C, grain_for(s.R * s.P), [&](int64_t begin, int64_t end) RF_ALWAYS_INLINE {
      acc_t buf[kChunk];
      for (int64_t bc = begin; bc < end; ++bc) {
        const int64_t b = bc / s.C, c = bc % s.C;
        scalar_t* orow = out + bc * s.P;
        for (int64_t p0 = 0; p0 < s.P; p0 += kChunk) {
          const int64_t n = std::min(kChunk, s.P - p0);
          for (int64_t r = 0; r < s.R; ++r) {
            const int64_t ch = r * s.C + c;
            const scalar_t* row = x + (b * s.RC() + ch) * s.P + p0;
            const acc_t a = att[b * s.RC() + ch];
            const acc_t sc = kAffine ? scale[ch] : acc_t(1), sh = kAffine ? shift[ch] : acc_t(0);
            if (r == 0) {
#pragma omp simd
              for (int64_t i = 0; i < n; ++i)
                buf[i] = a * splat_act<acc_t, kRelu>(splat_pre<acc_t, kAffine>(static_cast<acc_t>(row[i]), sc, sh));
            } else {
#pragma omp simd
              for (int64_t i = 0; i < n; ++i)
                buf[i] += a * splat_act<acc_t, kRelu>(splat_pre<acc_t, kAffine>(static_cast<acc_t>(row[i]), sc, sh));
            }
          }
#pragma omp simd
          for (int64_t i = 0; i < n; ++i) orow[p0 + i] = splat_store<scalar_t, acc_t>(buf[i]);
        }
      }
    });
    return;
  }
  parallel_items(0, s.B * s.P, grain_for(s.RC()), [&](int64_t begin, int64_t end) RF_ALWAYS_INLINE {
    std::vector<acc_t> buf(s.C);
    for (int64_t bp = begin; bp < end; ++bp) {
      const int64_t b = bp / s.P;
      const scalar_t* row = x + bp * s.RC();
      for (int64_t r = 0; r < s.R; ++r) {
        const scalar_t* xr = row + r * s.C;
        const acc_t* a = att + b * s.RC() + r * s.C;
        const acc_t* sc = kAffine ? scale + r * s.C : nullptr;
        const acc_t* sh = kAffine ? shift + r * s.C : nullptr;
        acc_t* bp_buf = buf.data();
        if (r == 0) {
#pragma omp simd
          for (int64_t c = 0; c < s.C; ++c)
            bp_buf[c] = a[c] * splat_act<acc_t, kRelu>(splat_pre<acc_t, kAffine>(
                                   static_cast<acc_t>(xr[c]), kAffine ? sc[c] : acc_t(1), kAffine ? sh[c] : acc_t(0)));
        } else {
#pragma omp simd
          for (int64_t c = 0; c < s.C; ++c)
            bp_buf[c] += a[c] * splat_act<acc_t, kRelu>(splat_pre<acc_t, kAffine>(
                                    static_cast<acc_t>(xr[c]), kAffine ? sc[c] : acc_t(1), kAffine ? sh[c] : acc_t(0)));
        }
      }
      scalar_t* orow = out + bp * s.C;
#pragma omp simd
      for (int64_t c = 0; c < s.C; ++c) orow[c] = splat_store<scalar_t, acc_t>(buf[c]);
    }
  });
}

// -------------------------------------------------------------------------------------------- combine backward

// Writes dx, and per item partial sums of d a (the attention weights), dscale and dshift, each (items, R*C).
template <typename scalar_t, typename acc_t, bool kAffine, bool kRelu>
void combine_backward(const scalar_t* gout, const scalar_t* x, const acc_t* att, const acc_t* scale,
                      const acc_t* shift, scalar_t* dx, acc_t* da_part, acc_t* dscale_part, acc_t* dshift_part,
                      const Shape& s, bool channels_last, int64_t K) {
  if (!channels_last) {
    // item = (b, c); partial buffers are indexed (b, r*C + c), i.e. one "run" per sample.
    parallel_items(0, s.B * s.C, grain_for(s.R * s.P), [&](int64_t begin, int64_t end) RF_ALWAYS_INLINE {
      for (int64_t bc = begin; bc < end; ++bc) {
        const int64_t b = bc / s.C, c = bc % s.C;
        const scalar_t* grow = gout + bc * s.P;
        for (int64_t r = 0; r < s.R; ++r) {
          const int64_t ch = r * s.C + c;
          const int64_t off = (b * s.RC() + ch) * s.P;
          const scalar_t* row = x + off;
          scalar_t* drow = dx + off;
          const acc_t a = att[b * s.RC() + ch];
          const acc_t sc = kAffine ? scale[ch] : acc_t(1), sh = kAffine ? shift[ch] : acc_t(0);
          acc_t da = 0, dsc = 0, dsh = 0;
#pragma omp simd reduction(+ : da, dsc, dsh)
          for (int64_t i = 0; i < s.P; ++i) {
            const acc_t v = static_cast<acc_t>(row[i]);
            const acc_t g = static_cast<acc_t>(grow[i]);
            const acc_t pre = splat_pre<acc_t, kAffine>(v, sc, sh);
            da += g * splat_act<acc_t, kRelu>(pre);
            const acc_t d = splat_times_act_grad<acc_t, kRelu>(g * a, pre);
            drow[i] = splat_store<scalar_t, acc_t>(kAffine ? d * sc : d);
            dsc += d * v;
            dsh += d;
          }
          da_part[b * s.RC() + ch] = da;
          if (kAffine) {
            dscale_part[b * s.RC() + ch] = dsc;
            dshift_part[b * s.RC() + ch] = dsh;
          }
        }
      }
    });
    return;
  }
  const int64_t run = (s.P + K - 1) / K;
  constexpr int N = kAffine ? 3 : 1;  // d a, then dscale and dshift
  parallel_items(0, s.B * K, 1, [&](int64_t begin, int64_t end) RF_ALWAYS_INLINE {
    CascadeScratch<acc_t, N> scratch(s.RC());
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / K, k = item % K;
      const acc_t* ab = att + b * s.RC();
      const auto add_position = [&](int64_t p, acc_t* const (&sums)[N]) RF_ALWAYS_INLINE {
        acc_t* da = sums[0];
        acc_t* dsc = nullptr;
        acc_t* dsh = nullptr;
        if constexpr (kAffine) {
          dsc = sums[1];
          dsh = sums[2];
        }
        const scalar_t* row = x + (b * s.P + p) * s.RC();
        scalar_t* drow = dx + (b * s.P + p) * s.RC();
        const scalar_t* grow = gout + (b * s.P + p) * s.C;
        for (int64_t r = 0; r < s.R; ++r) {
          const int64_t o = r * s.C;
#pragma omp simd
          for (int64_t c = 0; c < s.C; ++c) {
            const acc_t v = static_cast<acc_t>(row[o + c]);
            const acc_t g = static_cast<acc_t>(grow[c]);
            const acc_t sc = kAffine ? scale[o + c] : acc_t(1);
            const acc_t pre = splat_pre<acc_t, kAffine>(v, sc, kAffine ? shift[o + c] : acc_t(0));
            da[o + c] += g * splat_act<acc_t, kRelu>(pre);
            const acc_t d = splat_times_act_grad<acc_t, kRelu>(g * ab[o + c], pre);
            drow[o + c] = splat_store<scalar_t, acc_t>(kAffine ? d * sc : d);
            if (kAffine) {
              dsc[o + c] += d * v;
              dsh[o + c] += d;
            }
          }
        }
      };
      acc_t* acc[N];
      acc[0] = da_part + item * s.RC();
      if constexpr (kAffine) {
        acc[1] = dscale_part + item * s.RC();
        acc[2] = dshift_part + item * s.RC();
      }
      sum_run_cascaded<N>(k * run, std::min(s.P, (k + 1) * run), s.RC(), acc, scratch, add_position);
    }
  });
}

// Sums (items, n) partial buffers over `groups_of` consecutive items: (items / groups_of, n).
template <typename acc_t>
std::vector<acc_t> sum_items(const std::vector<acc_t>& part, int64_t items, int64_t groups_of, int64_t n) {
  std::vector<acc_t> out((items / groups_of) * n, acc_t(0));
  for (int64_t i = 0; i < items; ++i) {
    acc_t* o = out.data() + (i / groups_of) * n;
    const acc_t* p = part.data() + i * n;
    for (int64_t j = 0; j < n; ++j) o[j] += p[j];
  }
  return out;
}

// grad_logits (B, R*C) in the [groups][radix][C/groups] layout from the attention weights and their gradients,
// both (B, R*C) indexed r*C + c.
template <typename scalar_t, typename acc_t>
void write_logit_grads(const std::vector<acc_t>& att, const std::vector<acc_t>& da, const Shape& s, int64_t groups,
                       scalar_t* dl) {
  const int64_t cpg = s.C / groups;
  for (int64_t b = 0; b < s.B; ++b) {
    for (int64_t c = 0; c < s.C; ++c) {
      acc_t a[kMaxRadix], d[kMaxRadix], dlr[kMaxRadix];
      for (int64_t r = 0; r < s.R; ++r) {
        a[r] = att[b * s.RC() + r * s.C + c];
        d[r] = da[b * s.RC() + r * s.C + c];
      }
      splat_attention_backward<acc_t>(a, d, s.R, dlr);
      for (int64_t r = 0; r < s.R; ++r)
        dl[b * s.RC() + splat_logit_index(r, c, s.R, cpg)] = splat_store<scalar_t, acc_t>(dlr[r]);
    }
  }
}

template <typename acc_t>
at::Tensor vector_to_tensor(const std::vector<acc_t>& v, at::ScalarType dtype) {
  const auto acc_type = std::is_same_v<acc_t, double> ? at::kDouble : at::kFloat;
  at::Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::TensorOptions().dtype(acc_type));
  std::copy(v.begin(), v.end(), t.data_ptr<acc_t>());
  return t.to(dtype);
}

// ------------------------------------------------------------------------------------------------- op entries

at::Tensor splat_pool_cpu(const at::Tensor& x_in, const std::optional<at::Tensor>& scale,
                          const std::optional<at::Tensor>& shift, int64_t radix, bool relu) {
  check_splat_common(x_in, scale, shift, radix);
  const bool cl = splat_is_channels_last(x_in);
  const at::Tensor x = x_in.contiguous(splat_layout(x_in));
  const Shape s = shape_of(x, radix);
  auto gap = at::empty({s.B, s.C}, x.options());
  if (s.B * s.C == 0) return gap;
  TORCH_CHECK(s.P > 0, "resnest_fast: splat_pool needs H*W > 0, got x of shape ", x.sizes());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "splat_pool_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor sc = params_as_acc<acc_t>(scale), sh = params_as_acc<acc_t>(shift);
    dispatch_flags(scale.has_value(), relu, [&](auto affine, auto relu_c) {
      pool_forward<scalar_t, acc_t, decltype(affine)::value, decltype(relu_c)::value>(
          x.data_ptr<scalar_t>(), ptr_or_null<acc_t>(sc), ptr_or_null<acc_t>(sh), gap.data_ptr<scalar_t>(), s, cl);
    });
  });
  return gap;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> splat_pool_backward_cpu(const at::Tensor& grad_gap,
                                                                       const at::Tensor& x_in,
                                                                       const std::optional<at::Tensor>& scale,
                                                                       const std::optional<at::Tensor>& shift,
                                                                       int64_t radix, bool relu) {
  check_splat_common(x_in, scale, shift, radix);
  check_same_shape("grad_gap", grad_gap, {x_in.size(0), x_in.size(1) / radix}, x_in);
  const bool cl = splat_is_channels_last(x_in);
  const at::Tensor x = x_in.contiguous(splat_layout(x_in));
  const at::Tensor g = grad_gap.contiguous();
  const Shape s = shape_of(x, radix);
  auto dx = at::empty_like(x);
  prefer_huge_pages(dx);
  const bool affine = scale.has_value();
  at::Tensor dscale = affine ? at::zeros_like(*scale) : at::empty({0}, x.options());
  at::Tensor dshift = affine ? at::zeros_like(*shift) : at::empty({0}, x.options());
  if (x.numel() == 0) return {dx, dscale, dshift};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "splat_pool_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor sc = params_as_acc<acc_t>(scale), sh = params_as_acc<acc_t>(shift);
    const int64_t K = cl ? runs_per_sample(s.B, s.P) : 1;
    const int64_t items = s.B * K;
    std::vector<acc_t> dsc(affine ? items * s.RC() : 0, acc_t(0)), dsh(affine ? items * s.RC() : 0, acc_t(0));
    dispatch_flags(affine, relu, [&](auto affine_c, auto relu_c) {
      pool_backward<scalar_t, acc_t, decltype(affine_c)::value, decltype(relu_c)::value>(
          g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), ptr_or_null<acc_t>(sc), ptr_or_null<acc_t>(sh),
          dx.data_ptr<scalar_t>(), dsc.data(), dsh.data(), s, cl, K);
    });
    if (affine) {
      dscale = vector_to_tensor(sum_items(dsc, items, items, s.RC()), scale->scalar_type());
      dshift = vector_to_tensor(sum_items(dsh, items, items, s.RC()), shift->scalar_type());
    }
  });
  return {dx, dscale, dshift};
}

at::Tensor splat_combine_cpu(const at::Tensor& x_in, const at::Tensor& logits_in,
                             const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift,
                             int64_t radix, int64_t groups, bool relu) {
  check_splat_common(x_in, scale, shift, radix);
  check_splat_logits(x_in, logits_in, radix, groups);
  const bool cl = splat_is_channels_last(x_in);
  const at::Tensor x = x_in.contiguous(splat_layout(x_in));
  const at::Tensor logits = logits_in.contiguous();
  const Shape s = shape_of(x, radix);
  auto out = at::empty({s.B, s.C, x.size(2), x.size(3)}, x.options().memory_format(splat_layout(x_in)));
  prefer_huge_pages(out);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "splat_combine_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor sc = params_as_acc<acc_t>(scale), sh = params_as_acc<acc_t>(shift);
    const std::vector<acc_t> att = attention_weights<scalar_t, acc_t>(logits, s, groups);
    dispatch_flags(scale.has_value(), relu, [&](auto affine, auto relu_c) {
      combine_forward<scalar_t, acc_t, decltype(affine)::value, decltype(relu_c)::value>(
          x.data_ptr<scalar_t>(), att.data(), ptr_or_null<acc_t>(sc), ptr_or_null<acc_t>(sh),
          out.data_ptr<scalar_t>(), s, cl);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> splat_combine_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x_in, const at::Tensor& logits_in,
    const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift, int64_t radix, int64_t groups,
    bool relu) {
  check_splat_common(x_in, scale, shift, radix);
  check_splat_logits(x_in, logits_in, radix, groups);
  check_same_shape("grad_out", grad_out, {x_in.size(0), x_in.size(1) / radix, x_in.size(2), x_in.size(3)}, x_in);
  const bool cl = splat_is_channels_last(x_in);
  const at::MemoryFormat fmt = splat_layout(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor g = grad_out.contiguous(fmt);
  const at::Tensor logits = logits_in.contiguous();
  const Shape s = shape_of(x, radix);
  auto dx = at::empty_like(x);
  prefer_huge_pages(dx);
  auto dlogits = at::zeros_like(logits);
  const bool affine = scale.has_value();
  at::Tensor dscale = affine ? at::zeros_like(*scale) : at::empty({0}, x.options());
  at::Tensor dshift = affine ? at::zeros_like(*shift) : at::empty({0}, x.options());
  if (x.numel() == 0) return {dx, dlogits, dscale, dshift};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "splat_combine_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor sc = params_as_acc<acc_t>(scale), sh = params_as_acc<acc_t>(shift);
    const std::vector<acc_t> att = attention_weights<scalar_t, acc_t>(logits, s, groups);
    const int64_t K = cl ? runs_per_sample(s.B, s.P) : 1;
    const int64_t items = s.B * K;
    std::vector<acc_t> da(items * s.RC(), acc_t(0));
    std::vector<acc_t> dsc(affine ? items * s.RC() : 0, acc_t(0)), dsh(affine ? items * s.RC() : 0, acc_t(0));
    dispatch_flags(affine, relu, [&](auto affine_c, auto relu_c) {
      combine_backward<scalar_t, acc_t, decltype(affine_c)::value, decltype(relu_c)::value>(
          g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), att.data(), ptr_or_null<acc_t>(sc),
          ptr_or_null<acc_t>(sh), dx.data_ptr<scalar_t>(), da.data(), dsc.data(), dsh.data(), s, cl, K);
    });
    const std::vector<acc_t> da_b = sum_items(da, items, K, s.RC());  // (B, R*C), indexed r*C + c
    write_logit_grads(att, da_b, s, groups, dlogits.data_ptr<scalar_t>());
    if (affine) {
      dscale = vector_to_tensor(sum_items(dsc, items, items, s.RC()), scale->scalar_type());
      dshift = vector_to_tensor(sum_items(dsh, items, items, s.RC()), shift->scalar_type());
    }
  });
  return {dx, dlogits, dscale, dshift};
}

// --------------------------------------------------------------------------------------------- batch statistics

// Sums of (v - k) and (v - k)^2 per channel, with k the channel's first value: shifting by a value of the data
// keeps E[(v-k)^2] - E[v-k]^2 free of the cancellation that plain E[v^2] - E[v]^2 suffers when |mean| >> std.
template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor> bn_stats(const at::Tensor& x, bool channels_last) {
  const int64_t B = x.size(0), K = x.size(1), P = x.size(2) * x.size(3);
  const scalar_t* px = x.data_ptr<scalar_t>();
  std::vector<double> shift(K);
  for (int64_t k = 0; k < K; ++k) shift[k] = static_cast<double>(px[channels_last ? k : k * P]);
  const int64_t runs = channels_last ? runs_per_sample(B, P) : 1;
  const int64_t items = channels_last ? B * runs : B * K;
  std::vector<double> s1(channels_last ? items * K : items, 0.0), s2(s1.size(), 0.0);
  if (!channels_last) {
    parallel_items(0, items, grain_for(P), [&](int64_t begin, int64_t end) RF_ALWAYS_INLINE {
      for (int64_t bk = begin; bk < end; ++bk) {
        const scalar_t* row = px + bk * P;
        const double k = shift[bk % K];
        double a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
        for (int64_t i = 0; i < P; ++i) {
          const double d = static_cast<double>(row[i]) - k;
          a += d;
          b += d * d;
        }
        s1[bk] = a;
        s2[bk] = b;
      }
    });
  } else {
    const int64_t run = (P + runs - 1) / runs;
    parallel_items(0, items, 1, [&](int64_t begin, int64_t end) RF_ALWAYS_INLINE {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / runs, r = item % runs;
        double* a = s1.data() + item * K;
        double* q = s2.data() + item * K;
        const double* k = shift.data();
        const int64_t p_end = std::min(P, (r + 1) * run);
        for (int64_t p = r * run; p < p_end; ++p) {
          const scalar_t* row = px + (b * P + p) * K;
#pragma omp simd
          for (int64_t c = 0; c < K; ++c) {
            const double d = static_cast<double>(row[c]) - k[c];
            a[c] += d;
            q[c] += d * d;
          }
        }
      }
    });
  }
  const auto out_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor var = at::empty({K}, x.options().dtype(out_type)), mean = at::empty({K}, var.options());
  const double n = static_cast<double>(B * P);
  const int64_t per_channel = items / (channels_last ? 1 : K);  // partial sums per channel
  for (int64_t k = 0; k < K; ++k) {
    double a = 0, q = 0;
    for (int64_t i = 0; i < per_channel; ++i) {
      const int64_t idx = channels_last ? i * K + k : i * K + k;
      a += s1[idx];
      q += s2[idx];
    }
    const double m = a / n;
    const double v = std::max(q / n - m * m, 0.0);
    if (out_type == at::kDouble) {
      var.data_ptr<double>()[k] = v;
      mean.data_ptr<double>()[k] = shift[k] + m;
    } else {
      var.data_ptr<float>()[k] = static_cast<float>(v);
      mean.data_ptr<float>()[k] = static_cast<float>(shift[k] + m);
    }
  }
  return {var, mean};
}


// ------------------------------------------------------------------------- fused module backward (two passes)

// Pass 1: per item partial sums (items, R*C) of d a, dscale, dshift (combine part), and per (sample, channel)
// sums of act'(pre)*x and act'(pre). Affine and ReLU are always on here (bn0 then ReLU, as in the module).
template <typename scalar_t, typename acc_t>
void backward_reduce(const scalar_t* gout, const scalar_t* x, const acc_t* att, const acc_t* scale,
                     const acc_t* shift, acc_t* da_part, acc_t* dsc_part, acc_t* dsh_part, acc_t* mx_part,
                     acc_t* m_part, const Shape& s, bool channels_last, int64_t K) {
  if (!channels_last) {
    parallel_items(0, s.B * s.C, grain_for(s.R * s.P), [&](int64_t begin, int64_t end) RF_ALWAYS_INLINE {
      for (int64_t bc = begin; bc < end; ++bc) {
        const int64_t b = bc / s.C, c = bc % s.C;
        const scalar_t* grow = gout + bc * s.P;
        for (int64_t r = 0; r < s.R; ++r) {
          const int64_t ch = r * s.C + c, o = b * s.RC() + ch;
          const scalar_t* row = x + o * s.P;
          const acc_t a = att[o], sc = scale[ch], sh = shift[ch];
          acc_t da = 0, dsc = 0, dsh = 0, mx = 0, m = 0;
#pragma omp simd reduction(+ : da, dsc, dsh, mx, m)
          for (int64_t i = 0; i < s.P; ++i) {
            const auto t = splat_backward_reduce_terms<acc_t>(static_cast<acc_t>(row[i]), static_cast<acc_t>(grow[i]),
                                                              a, sc, sh);
            da += t.da;
            dsc += t.dscale;
            dsh += t.dshift;
            mx += t.mx;
            m += t.m;
          }
          da_part[o] = da;
          dsc_part[o] = dsc;
          dsh_part[o] = dsh;
          mx_part[o] = mx;
          m_part[o] = m;
        }
      }
    });
    return;
  }
  const int64_t run = (s.P + K - 1) / K;
  parallel_items(0, s.B * K, 1, [&](int64_t begin, int64_t end) RF_ALWAYS_INLINE {
    CascadeScratch<acc_t, 5> scratch(s.RC());
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / K, k = item % K;
      const acc_t* ab = att + b * s.RC();
      const auto add_position = [&](int64_t p, acc_t* const (&sums)[5]) RF_ALWAYS_INLINE {
        acc_t* da = sums[0];
        acc_t* dsc = sums[1];
        acc_t* dsh = sums[2];
        acc_t* mx = sums[3];
        acc_t* m = sums[4];
        const scalar_t* row = x + (b * s.P + p) * s.RC();
        const scalar_t* grow = gout + (b * s.P + p) * s.C;
        for (int64_t r = 0; r < s.R; ++r) {
          const int64_t o = r * s.C;
#pragma omp simd
          for (int64_t c = 0; c < s.C; ++c) {
            const auto t = splat_backward_reduce_terms<acc_t>(static_cast<acc_t>(row[o + c]),
                                                              static_cast<acc_t>(grow[c]), ab[o + c], scale[o + c],
                                                              shift[o + c]);
            da[o + c] += t.da;
            dsc[o + c] += t.dscale;
            dsh[o + c] += t.dshift;
            mx[o + c] += t.mx;
            m[o + c] += t.m;
          }
        }
      };
      const int64_t o = item * s.RC();
      acc_t* const acc[5] = {da_part + o, dsc_part + o, dsh_part + o, mx_part + o, m_part + o};
      sum_run_cascaded<5>(k * run, std::min(s.P, (k + 1) * run), s.RC(), acc, scratch, add_position);
    }
  });
}

// Pass 2: grad_x = scale*act'(pre)*(g*a + gg[b, c]) + ca*x + cb, gg = grad_gap/(H*W) expanded to (B, R*C).
template <typename scalar_t, typename acc_t>
void backward_input(const scalar_t* gout, const acc_t* gg, const scalar_t* x, const acc_t* att, const acc_t* scale,
                    const acc_t* shift, const acc_t* ca, const acc_t* cb, scalar_t* dx, const Shape& s,
                    bool channels_last) {
  if (!channels_last) {
    parallel_items(0, s.B * s.C, grain_for(s.R * s.P), [&](int64_t begin, int64_t end) RF_ALWAYS_INLINE {
      for (int64_t bc = begin; bc < end; ++bc) {
        const int64_t b = bc / s.C, c = bc % s.C;
        const scalar_t* grow = gout + bc * s.P;
        for (int64_t r = 0; r < s.R; ++r) {
          const int64_t ch = r * s.C + c, o = b * s.RC() + ch;
          const scalar_t* row = x + o * s.P;
          scalar_t* drow = dx + o * s.P;
          const acc_t a = att[o], g0 = gg[o], sc = scale[ch], sh = shift[ch], a1 = ca[ch], b1 = cb[ch];
#pragma omp simd
          for (int64_t i = 0; i < s.P; ++i) {
            drow[i] = splat_store<scalar_t, acc_t>(splat_backward_input_value<acc_t>(
                static_cast<acc_t>(row[i]), static_cast<acc_t>(grow[i]), a, g0, sc, sh, a1, b1));
          }
        }
      }
    });
    return;
  }
  parallel_items(0, s.B * s.P, grain_for(s.RC()), [&](int64_t begin, int64_t end) RF_ALWAYS_INLINE {
    for (int64_t bp = begin; bp < end; ++bp) {
      const int64_t b = bp / s.P;
      const scalar_t* row = x + bp * s.RC();
      const scalar_t* grow = gout + bp * s.C;
      scalar_t* drow = dx + bp * s.RC();
      const acc_t* ab = att + b * s.RC();
      const acc_t* gb = gg + b * s.RC();
      for (int64_t r = 0; r < s.R; ++r) {
        const int64_t o = r * s.C;
#pragma omp simd
        for (int64_t c = 0; c < s.C; ++c) {
          drow[o + c] = splat_store<scalar_t, acc_t>(splat_backward_input_value<acc_t>(
              static_cast<acc_t>(row[o + c]), static_cast<acc_t>(grow[c]), ab[o + c], gb[o + c], scale[o + c],
              shift[o + c], ca[o + c], cb[o + c]));
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> splat_backward_reduce_cpu(
    const at::Tensor& grad_out, const at::Tensor& x_in, const at::Tensor& logits_in, const at::Tensor& scale,
    const at::Tensor& shift, int64_t radix, int64_t groups) {
  check_splat_common(x_in, scale, shift, radix);
  check_splat_logits(x_in, logits_in, radix, groups);
  check_same_shape("grad_out", grad_out, {x_in.size(0), x_in.size(1) / radix, x_in.size(2), x_in.size(3)}, x_in);
  const bool cl = splat_is_channels_last(x_in);
  const at::MemoryFormat fmt = splat_layout(x_in);
  const at::Tensor x = x_in.contiguous(fmt), g = grad_out.contiguous(fmt), logits = logits_in.contiguous();
  const Shape s = shape_of(x, radix);
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto dlogits = at::zeros_like(logits);
  at::Tensor dscale = at::zeros({s.RC()}, scale.options()), dshift = at::zeros({s.RC()}, shift.options());
  at::Tensor mx = at::zeros({s.B, s.RC()}, x.options().dtype(acc_type)), m = at::zeros_like(mx);
  if (x.numel() == 0) return {dlogits, dscale, dshift, mx, m};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "splat_backward_reduce_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor sc = params_as_acc<acc_t>(scale), sh = params_as_acc<acc_t>(shift);
    const std::vector<acc_t> att = attention_weights<scalar_t, acc_t>(logits, s, groups);
    const int64_t K = cl ? runs_per_sample(s.B, s.P) : 1;
    const int64_t items = s.B * K;
    std::vector<acc_t> da(items * s.RC(), 0), dsc(da.size(), 0), dsh(da.size(), 0), mxp(da.size(), 0),
        mp(da.size(), 0);
    backward_reduce<scalar_t, acc_t>(g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), att.data(),
                                     sc.data_ptr<acc_t>(), sh.data_ptr<acc_t>(), da.data(), dsc.data(), dsh.data(),
                                     mxp.data(), mp.data(), s, cl, K);
    const std::vector<acc_t> da_b = sum_items(da, items, K, s.RC());
    const std::vector<acc_t> mx_b = sum_items(mxp, items, K, s.RC()), m_b = sum_items(mp, items, K, s.RC());
    std::copy(mx_b.begin(), mx_b.end(), mx.data_ptr<acc_t>());
    std::copy(m_b.begin(), m_b.end(), m.data_ptr<acc_t>());
    write_logit_grads(att, da_b, s, groups, dlogits.data_ptr<scalar_t>());
    dscale = vector_to_tensor(sum_items(dsc, items, items, s.RC()), scale.scalar_type());
    dshift = vector_to_tensor(sum_items(dsh, items, items, s.RC()), shift.scalar_type());
  });
  return {dlogits, dscale, dshift, mx, m};
}

at::Tensor splat_backward_input_cpu(const at::Tensor& grad_out, const at::Tensor& grad_gap, const at::Tensor& x_in,
                                    const at::Tensor& logits_in, const at::Tensor& scale, const at::Tensor& shift,
                                    const at::Tensor& coef_a, const at::Tensor& coef_b, int64_t radix,
                                    int64_t groups) {
  check_splat_common(x_in, scale, shift, radix);
  check_splat_common(x_in, coef_a, coef_b, radix, "coef_a", "coef_b");
  check_splat_logits(x_in, logits_in, radix, groups);
  check_same_shape("grad_out", grad_out, {x_in.size(0), x_in.size(1) / radix, x_in.size(2), x_in.size(3)}, x_in);
  TORCH_CHECK(grad_gap.sizes() == at::IntArrayRef({x_in.size(0), x_in.size(1) / radix}),
              "resnest_fast: grad_gap must have shape (B, C), got ", grad_gap.sizes());
  TORCH_CHECK(grad_gap.device() == x_in.device(), "resnest_fast: grad_gap is on ", grad_gap.device(),
              " but x is on ", x_in.device());
  const bool cl = splat_is_channels_last(x_in);
  const at::MemoryFormat fmt = splat_layout(x_in);
  const at::Tensor x = x_in.contiguous(fmt), g = grad_out.contiguous(fmt), logits = logits_in.contiguous();
  const Shape s = shape_of(x, radix);
  auto dx = at::empty_like(x);
  prefer_huge_pages(dx);
  if (x.numel() == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "splat_backward_input_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = std::is_same_v<acc_t, double> ? at::kDouble : at::kFloat;
    const at::Tensor sc = params_as_acc<acc_t>(scale), sh = params_as_acc<acc_t>(shift);
    const at::Tensor a1 = params_as_acc<acc_t>(coef_a), b1 = params_as_acc<acc_t>(coef_b);
    // grad_gap / (H*W), expanded over the radix splits to (B, R*C)
    const at::Tensor gg = (grad_gap.to(acc_type) / static_cast<double>(s.P)).repeat({1, s.R}).contiguous();
    const std::vector<acc_t> att = attention_weights<scalar_t, acc_t>(logits, s, groups);
    backward_input<scalar_t, acc_t>(g.data_ptr<scalar_t>(), gg.data_ptr<acc_t>(), x.data_ptr<scalar_t>(), att.data(),
                                    sc.data_ptr<acc_t>(), sh.data_ptr<acc_t>(), a1.data_ptr<acc_t>(),
                                    b1.data_ptr<acc_t>(), dx.data_ptr<scalar_t>(), s, cl);
  });
  return dx;
}

std::tuple<at::Tensor, at::Tensor> splat_bn_stats_cpu(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.dim() == 4, "resnest_fast: x must be 4-D (B, K, H, W), got ", x_in.dim(), "-D");
  TORCH_CHECK(at::isFloatingType(x_in.scalar_type()), "resnest_fast: x must be floating point, got ",
              x_in.scalar_type());
  TORCH_CHECK(x_in.size(0) * x_in.size(2) * x_in.size(3) > 0,
              "resnest_fast: splat_bn_stats needs at least one value per channel, got x of shape ", x_in.sizes());
  if (x_in.numel() == 0) {  // no channel (K == 0): nothing to sum, and bn_stats divides by K
    const auto out_type = x_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    at::Tensor var = at::empty({x_in.size(1)}, x_in.options().dtype(out_type));
    return {var, at::empty_like(var)};
  }
  const bool cl = splat_is_channels_last(x_in);
  const at::Tensor x = x_in.contiguous(splat_layout(x_in));
  std::tuple<at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "splat_bn_stats_cpu",
                                  [&] { out = bn_stats<scalar_t>(x, cl); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(resnest_fast, CPU, m) {
  m.impl("splat_pool", &splat_pool_cpu);
  m.impl("splat_pool_backward", &splat_pool_backward_cpu);
  m.impl("splat_combine", &splat_combine_cpu);
  m.impl("splat_combine_backward", &splat_combine_backward_cpu);
  m.impl("splat_bn_stats", &splat_bn_stats_cpu);
  m.impl("splat_backward_reduce", &splat_backward_reduce_cpu);
  m.impl("splat_backward_input", &splat_backward_input_cpu);
}

}  // namespace resnest_fast
