#!/usr/bin/env bash
# The main job on a fresh machine (no GPU, no download needed):
#   1. installs torch 2.13 (CPU build), the build tools and the benchmark's reference (mmsegmentation 1.2.2),
#      builds resnest_fast (C++ CPU kernels; CUDA ones too where a GPU or FORCE_CUDA=1 and nvcc are present) and
#      prints what was built and what will run;
#   2. trains a small ResNeSt segmenter on the generated dataset (about 2 minutes on 2 CPU cores) and scores it
#      on its validation split (mIoU; chance is about 14 %);
#   3. benchmarks against the reference side by side in one process: split attention after the conv (mmseg-style
#      eager, torch.compile of it, ours) and the DeepLabV3 ResNeSt-101-D8 segmenter (mmseg's model, ours, ours
#      after optimize_for_inference, and both under torch.compile with freezing). CSVs in benchmarks/results/,
#      replacing those of a previous run of this script (--overwrite).
# Usage: bash run.sh [all|train|bench]   (default: all)
set -euo pipefail
cd "$(dirname "$0")"
WHAT=${1:-all}
case "$WHAT" in all|train|bench) ;; *) echo "usage: bash run.sh [all|train|bench]" >&2; exit 2 ;; esac
source scripts/setup_env.sh
pip_install -q "$TORCH_SPEC" pytest pytest-benchmark matplotlib mmengine==0.10.7 mmcv-lite==2.1.0 \
  mmsegmentation==1.2.2 ftfy regex
echo "== building and installing resnest_fast"
"$PYTHON" -m pip install -q -e .
"$PYTHON" -m resnest_fast info

if [ "$WHAT" != bench ]; then
  CONFIG=resnest_s50-d8-w16_fcn_1xb8-400_synthetic-64x64
  WORK=work_dirs/$CONFIG
  echo "== training $CONFIG (generated data, CPU); --resume continues or finishes a previous run of this script"
  "$PYTHON" -m resnest_fast train "$CONFIG" --work-dir "$WORK" --resume
  echo "== scoring the last checkpoint on the validation split"
  "$PYTHON" -m resnest_fast test "$CONFIG" "$WORK/$(cat "$WORK/latest")"
fi

if [ "$WHAT" != train ]; then
  echo "== benchmark: split attention after the conv (B=2, radix 2, C=256, 64x128, fp32)"
  "$PYTHON" -m pytest benchmarks/test_bench_splat.py --benchmark-only -k "issue or summary" -p no:cacheprovider -q \
    --benchmark-columns=median,min,rounds
  echo "== benchmark: DeepLabV3 ResNeSt-101-D8, eval forward 1x3x256x512, same weights (compiling takes minutes)"
  "$PYTHON" -m benchmarks.models --models deeplabv3 --size 256 512 --compile --memory --overwrite
  "$PYTHON" -m benchmarks.plot benchmarks/results/splat.csv -o benchmarks/results/splat.png --overwrite
fi
