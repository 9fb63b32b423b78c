#!/usr/bin/env bash
# The Triton kernels compiled for sm_80/sm_90 (scripts/triton_compile_check.py --quick) by the other Triton versions
# the project supports: 3.6 (what torch 2.11 pins, the GPU image's) and 3.8 (what torch 2.14 pins); the
# environment's own Triton is checked by the caller. Each version is installed without dependencies into a folder
# of its own, put first on PYTHONPATH for the check, and kept there for the next run. Nothing here needs a GPU.
# Usage: bash scripts/triton_versions_check.sh [VERSION ...]   (PYTHON: the interpreter; default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(3.6.0 3.8.0)
for v in "${versions[@]}"; do
  dir=${TMPDIR:-/tmp}/resnest_fast_triton-$v
  if ! PYTHONPATH=$dir "$PY" -c "import sys, triton; sys.exit(triton.__version__ != '$v')" 2>/dev/null; then
    rm -rf "$dir"
    "$PY" -m pip install -q --no-deps --target "$dir" "triton==$v"
  fi
  echo "== Triton $v: every kernel the quick set launches, compiled for sm_80 and sm_90"
  log=$(mktemp)
  if ! PYTHONPATH=$dir TRITON_INTERPRET=0 "$PY" scripts/triton_compile_check.py --quick >"$log" 2>&1; then
    grep -E "^FAIL" "$log" | head -20 || true
    tail -25 "$log"
    echo "Triton $v: compile check FAILED (full output: $log)"
    exit 1
  fi
  sed -n '/ compiles (/,$p' "$log"
  rm -f "$log"
done
