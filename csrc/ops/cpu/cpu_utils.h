// Shared by the CPU kernels: parallel loops compiled once per instruction set, and huge pages for big outputs.
#pragma once

#include <ATen/Parallel.h>

#include <cstddef>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace resnest_fast {

// Runtime ISA dispatch without an ODR hazard: GCC compiles run_items once per target (AVX-512, AVX2, baseline)
// plus a resolver picked at load time, and the always-inlined work lambdas are vectorised inside each clone at
// its width. (A lambda cannot carry target_clones itself; everything from ATen stays compiled once.)
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define RF_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#define RF_ALWAYS_INLINE __attribute__((always_inline))
#else
#define RF_CLONES
#define RF_ALWAYS_INLINE
#endif

template <typename F>
RF_CLONES void run_items(const F& f, int64_t begin, int64_t end) {
  f(begin, end);
}

template <typename F>
void parallel_items(int64_t begin, int64_t end, int64_t grain, const F& f) {
  at::parallel_for(begin, end, grain, [&](int64_t b, int64_t e) { run_items(f, b, e); });
}

// A fresh output of tens of MB comes straight from mmap, and its first write faults it in 4 KiB at a time:
// serialised whatever the thread count, those faults cost several times the write itself.
// Asking for transparent huge pages on the still untouched range (THP in "madvise" mode, the common default)
// cuts the faults 512-fold. Memory that is already mapped (reused heap blocks) is unaffected; a failure is
// harmless. Outputs below kHugeMin are left alone.
inline constexpr size_t kHugePage = size_t(1) << 21;
inline constexpr size_t kHugeMin = size_t(4) << 20;

inline void prefer_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const size_t n = t.nbytes();
  if (n < kHugeMin) return;
  const uintptr_t p = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t begin = (p + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (p + n) & ~(kHugePage - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

}  // namespace resnest_fast
