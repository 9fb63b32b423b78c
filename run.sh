#!/usr/bin/env bash
# Sets up this machine and runs the main job: builds resnest_fast (C++ CPU kernels; CUDA ones too where a GPU
# or FORCE_CUDA=1 and nvcc are present), prints what was built and what will run, then measures the fused
# split attention against mmseg-style eager and torch.compile side by side, twice: with glibc's default malloc
# (fresh outputs of 16+ MB are mmap'ed and page-fault on every call) and with large blocks kept on the heap
# (GLIBC_TUNABLES, applied to every provider in the process alike). CSVs in benchmarks/results/, plot in
# benchmarks/results/splat.png.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_env.sh
"$PYTHON" -m pip install -q pytest pytest-benchmark matplotlib
echo "== building and installing resnest_fast"
"$PYTHON" -m pip install -q -e .
"$PYTHON" -m resnest_fast info
bench() {
  "$PYTHON" -m pytest benchmarks --benchmark-only -k "issue or summary" -p no:cacheprovider -q \
    --benchmark-columns=median,min,rounds "$@"
}
echo "== benchmark: split attention after the conv (B=2, radix 2, C=256, 64x128, fp32), glibc default malloc"
bench "$@"
echo "== the same with large blocks kept on the heap (no page faults on fresh outputs)"
GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824 bench "$@"
"$PYTHON" -m benchmarks.plot benchmarks/results/splat.csv benchmarks/results/splat-tuned-malloc.csv \
  -o benchmarks/results/splat.png
