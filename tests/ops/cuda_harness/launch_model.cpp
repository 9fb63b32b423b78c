// CPU harness of the CUDA launch geometry (ops/launch_geometry.h), built and run by tests/ops/test_cuda_launch_model.py
// with a plain C++17 compiler: no torch, no CUDA.
//
//   launch_model model SMS < shapes   one line per (kernel, layout, dtype, shape) read from stdin ("name B R C H W"):
//                                     model <kernel> <nchw|cl> <dtype> <name> <blocks> <bytes in flight per SM>
//                                     <bytes moved> <bytes loaded per SM>, from plan_launch + model_launch, the
//                                     functions the launchers use
//   launch_model legacy SMS < shapes  the same for the previous geometry (one block or warp per (sample, channel),
//                                     a grid-stride loop with one load in flight per stream), for comparison
//   launch_model cover SMS B R C H W  enumerates every (block, thread, step) of the real launches of every kernel at
//                                     that shape, with the mapping functions the kernels call, and prints
//                                     cover <kernel> <layout> <U> <V> <elements> <touched once> <slots>
//                                     <slots distinct> <bad>: bad counts elements touched 0 or > 1 times and slot
//                                     collisions.
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "ops/launch_geometry.h"

using namespace resnest_fast::launch;

namespace {

struct Dtype {
  const char* name;
  int size, acc;
};
constexpr Dtype kDtypes[] = {{"fp32", 4, 4}, {"bf16", 2, 4}, {"fp16", 2, 4}, {"fp64", 8, 8}};

void model(int sms) {
  std::string name;
  int64_t B, R, C, H, W;
  while (std::cin >> name >> B >> R >> C >> H >> W) {
    for (const Kernel k : kAllKernels) {
      for (const bool cl : {false, true}) {
        const LaunchPlan p = plan_launch(k, cl, B, R, C, H * W, sms);
        for (const Dtype& d : kDtypes) {
          const int acc = k == Kernel::BnStats ? 8 : d.acc;
          const LaunchModel m = model_launch(p, B, R, C, H * W, d.size, acc, sms);
          std::printf("model %s %s %s %s %lld %.0f %.0f %.0f\n", kernel_name(k), cl ? "cl" : "nchw", d.name,
                      name.c_str(), static_cast<long long>(m.blocks), m.bytes_in_flight_per_sm, m.bytes_moved,
                      m.bytes_loaded_per_sm);
        }
      }
    }
  }
}

// The geometry this header replaced: NCHW one block per (sample, channel) item when items are long (>= 2048
// values) or too few to fill the GPU, else a warp per item; `#pragma unroll 4` over `i < P; i += T` keeps one
// load per stream in flight; up to 8 blocks of 256 threads resident.
void legacy(int sms) {
  std::string name;
  int64_t B, R, C, H, W;
  while (std::cin >> name >> B >> R >> C >> H >> W) {
    const int64_t P = H * W;
    for (const Kernel k : kAllKernels) {
      if (k == Kernel::Combine || k == Kernel::BackwardInput) continue;  // grid-stride elementwise kernels
      const bool per_row = k == Kernel::PoolBackward || k == Kernel::BnStats;
      const int64_t items = per_row ? B * R * C : B * C, elems = per_row ? P : R * P;
      const bool whole_block = elems >= 2048 || (items < int64_t(32) * sms && elems >= 256);
      const int64_t blocks = whole_block ? items : ceil_div(items, 8);
      const int streams = (k == Kernel::CombineBackward || k == Kernel::BackwardReduce) ? 2 : 1;
      for (const Dtype& d : kDtypes) {
        const double resident = std::min<double>(8, double(blocks) / sms);
        std::printf("legacy %s nchw %s %s %lld %.0f\n", kernel_name(k), d.name, name.c_str(),
                    static_cast<long long>(blocks), resident * 256 * streams * d.size);
      }
    }
  }
}

void report(const char* kernel, const char* layout, int U, int V, const std::vector<int>& hits,
            const std::vector<int>& slots) {
  int64_t once = 0, bad = 0, distinct = 0;
  for (int h : hits) {
    once += h == 1;
    bad += h != 1;
  }
  for (int s : slots) {
    distinct += s == 1;
    bad += s > 1;
  }
  std::printf("cover %s %s %d %d %zu %lld %zu %lld %lld\n", kernel, layout, U, V, hits.size(),
              static_cast<long long>(once), slots.size(), static_cast<long long>(distinct),
              static_cast<long long>(bad));
}

// NCHW: the kernels run full steps with V-wide loads (chunk_index<V>), then the tail step with scalar loads
// (tail_index), each block writing its partial sums to chunk_slot.
template <int U, int V>
void cover_nchw(const LaunchPlan& p, int64_t N) {
  if (p.unroll != U) return;
  const RowChunks& g = p.rows;
  std::vector<int> hits(static_cast<size_t>(g.rows * g.len), 0);
  std::vector<int> slots(p.reduced_sums ? static_cast<size_t>(g.rows * g.chunks) : 0, 0);
  for (int64_t block = 0; block < g.blocks(); ++block) {
    const ChunkSpan s = chunk_span(g, block);
    for (int t = 0; t < kThreads; ++t) {
      for (int64_t step = 0; step < s.full_steps; ++step)
        for (int u = 0; u < U; ++u) {
          const int64_t i = chunk_index<U, V>(s, step, u, t);
          if (i < s.begin || i >= s.end) hits.at(0) += 1000;  // outside its chunk: reported as bad
          else ++hits[static_cast<size_t>(s.row * g.len + i)];
        }
      for (int u = 0; u < U; ++u) {
        const int64_t i = tail_index<U>(s, u, t);
        if (i < s.end) ++hits[static_cast<size_t>(s.row * g.len + i)];
      }
    }
    if (p.reduced_sums) ++slots.at(static_cast<size_t>(chunk_slot(g, s.row, s.chunk, N)));
  }
  report(kernel_name(p.kernel), "nchw", U, V, hits, slots);
}

void cover_cl(const LaunchPlan& p) {
  const PositionRuns& g = p.runs;
  std::vector<int> hits(static_cast<size_t>(g.B * g.P * g.N), 0);
  std::vector<int> slots(p.reduced_sums ? static_cast<size_t>(g.B * g.K * g.N) : 0, 0);
  for (int64_t block = 0; block < g.blocks(); ++block) {
    for (int t = 0; t < kThreads; ++t) {
      const RunThread r = run_thread(g, block, t);
      if (r.ch >= g.N) continue;
      const int64_t full = r.count / p.unroll;
      for (int64_t step = 0; step <= full; ++step)
        for (int u = 0; u < p.unroll; ++u) {
          const int64_t j = step * p.unroll + u;
          if (j < r.count) ++hits[static_cast<size_t>((r.b * g.P + run_position(r, j)) * g.N + r.ch)];
        }
      if (p.reduced_sums && r.ty == 0) ++slots.at(static_cast<size_t>(run_slot(g, r)));
    }
  }
  report(kernel_name(p.kernel), "cl", p.unroll, 1, hits, slots);
}

void cover(int sms, int64_t B, int64_t R, int64_t C, int64_t H, int64_t W) {
  for (const Kernel k : kAllKernels) {
    const int64_t N = k == Kernel::Combine ? C : R * C;
    const LaunchPlan nchw = plan_launch(k, false, B, R, C, H * W, sms);
    // every (unroll, vector width) the kernels compile: scalar, fp32 and 16-bit 128-bit loads; fp64 takes V = 2
    cover_nchw<8, 1>(nchw, N);
    cover_nchw<8, 2>(nchw, N);
    cover_nchw<8, 4>(nchw, N);
    cover_nchw<8, 8>(nchw, N);
    cover_nchw<4, 1>(nchw, N);
    cover_nchw<4, 2>(nchw, N);
    cover_nchw<4, 4>(nchw, N);
    cover_nchw<2, 1>(nchw, N);
    cover_nchw<2, 2>(nchw, N);
    cover_nchw<1, 1>(nchw, N);
    cover_cl(plan_launch(k, true, B, R, C, H * W, sms));
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s model|legacy|cover SMS [B R C H W]\n", argv[0]);
    return 2;
  }
  const std::string mode = argv[1];
  const int sms = std::stoi(argv[2]);
  if (mode == "model") model(sms);
  else if (mode == "legacy") legacy(sms);
  else if (mode == "cover" && argc == 8)
    cover(sms, std::stoll(argv[3]), std::stoll(argv[4]), std::stoll(argv[5]), std::stoll(argv[6]), std::stoll(argv[7]));
  else return 2;
  return 0;
}
