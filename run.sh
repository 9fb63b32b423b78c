#!/usr/bin/env bash
# Sets up this machine and runs the main job: builds resnest_fast (C++ CPU kernels; CUDA ones too where a GPU
# or FORCE_CUDA=1 and nvcc are present), prints what was built and what will run, then measures the fused
# split attention against mmseg-style eager and torch.compile side by side (benchmarks/results/splat.csv).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_env.sh
"$PYTHON" -m pip install -q pytest pytest-benchmark
echo "== building and installing resnest_fast"
"$PYTHON" -m pip install -q -e .
"$PYTHON" -m resnest_fast info
echo "== benchmark: split attention after the conv (B=2, radix 2, C=256, 64x128, fp32)"
"$PYTHON" -m pytest benchmarks --benchmark-only -k "issue or summary" -p no:cacheprovider \
  --benchmark-columns=median,min,rounds "$@"
