#!/usr/bin/env bash
# The GPU check: one command for a machine with one NVIDIA GPU and no internet (torch with CUDA, triton, pytest
# already installed; mmsegmentation not needed), in about 8 minutes on an H100:
#   build     FORCE_CUDA=1 for the visible GPU's arch (--no-build-isolation --no-deps: the machine's torch)
#   info      what was built and which backend runs
#   check     python -m benchmarks.gpu_check all: correctness of every op (cuda, Triton) against the reference,
#             op timings as % of the copy bandwidth, four-model fps (fp32, bf16 autocast), training memory
#   sanitize  compute-sanitizer memcheck and racecheck over every CUDA op at small odd shapes
#   pytest    the needs_cuda tests, Triton compiled (TRITON_INTERPRET=0)
# CSVs, logs and summary.txt go to $OUT if set, else gpu_results/. Exit 1 if a step failed.
# --dry-run: the same on the CPU at tiny shapes, no build, no sanitizer, no GPU tests (CI runs this).
# --skip-build: use the resnest_fast already installed.
# Usage: bash scripts/gpu_check.sh [--dry-run] [--skip-build]
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
BUILD=1
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    --skip-build) BUILD=0 ;;
    *) echo "usage: bash scripts/gpu_check.sh [--dry-run] [--skip-build]" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
failed=()

step() {  # step NAME COMMAND...: runs it with its output in $OUT/NAME.log, says how it went, goes on either way
  local name=$1 start rc
  shift
  start=$(date +%s)
  echo "== $name"
  "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then
    echo "   ok in $(( $(date +%s) - start )) s"
  else
    echo "   FAILED (exit $rc) in $(( $(date +%s) - start )) s; the end of $OUT/$name.log:"
    tail -25 "$OUT/$name.log" | sed 's/^/   | /'
    failed+=("$name")
  fi
}

if [ $DRY -eq 1 ]; then
  step info "$PY" -m resnest_fast info
  step check env TRITON_INTERPRET=1 "$PY" -m benchmarks.gpu_check all --dry-run --out "$OUT"
else
  if ! arch=$("$PY" -c "import sys, torch
sys.exit(1) if not torch.cuda.is_available() else print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null); then
    echo "gpu_check: torch sees no CUDA GPU here (on a CPU machine: bash scripts/gpu_check.sh --dry-run)" >&2
    exit 2
  fi
  export TRITON_INTERPRET=0
  "$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))"
  if [ $BUILD -eq 1 ]; then
    step build env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
      "$PY" -m pip install -v --no-build-isolation --no-deps -e .
  fi
  step info "$PY" -m resnest_fast info
  # the figures first (correctness, timings): if the machine's time runs out, the slower sweeps go first
  step check "$PY" -m benchmarks.gpu_check all --out "$OUT"
  if command -v compute-sanitizer >/dev/null; then
    step sanitize-memcheck compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" -m benchmarks.gpu_check sanitize
    step sanitize-racecheck compute-sanitizer --tool racecheck --error-exitcode 1 "$PY" -m benchmarks.gpu_check sanitize
  else
    echo "== sanitize: compute-sanitizer not found, skipped"
  fi
  step pytest "$PY" -m pytest -q -p no:cacheprovider -m needs_cuda tests
fi

if [ -f "$OUT/summary.txt" ]; then
  echo
  cat "$OUT/summary.txt"
fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu_check: failed steps: ${failed[*]} (logs in $OUT/)"
  exit 1
fi
echo "gpu_check: all steps passed (results in $OUT/)"
