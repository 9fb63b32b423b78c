#!/usr/bin/env bash
# Builds resnest_fast with its CUDA kernels against the CUDA build of torch (2.14.1) in a separate virtualenv,
# with FORCE_CUDA=1 since no GPU is present, then checks that the CUDA kernels are registered and runs the CPU
# op tests against that build. Nothing here needs a GPU; GPU tests carry `needs_cuda` and skip.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${RESNEST_FAST_CUDA_VENV:-${TMPDIR:-/tmp}/resnest_fast_cuda_venv}
CUDA_TORCH=${RESNEST_FAST_CUDA_TORCH:-torch==2.14.1}
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then
  echo "== creating $VENV with $CUDA_TORCH (CUDA build)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "$CUDA_TORCH" ninja numpy pytest "setuptools>=64" wheel
fi
echo "== FORCE_CUDA=1 build against $("$VENV/bin/python" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')"
"$VENV/bin/pip" uninstall -q -y resnest_fast 2>/dev/null || true  # a failed build must not test an old one
log=$(mktemp)
start=$(date +%s)
if ! FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-2} "$VENV/bin/pip" install -v . >"$log" 2>&1; then
  tail -60 "$log"
  echo "CUDA build FAILED (full log: $log)"
  exit 1
fi
grep -E "resnest_fast setup" "$log" || true
echo "   build took $(( $(date +%s) - start )) s"
(cd "${TMPDIR:-/tmp}" && "$VENV/bin/python" -c "
import torch, resnest_fast
from resnest_fast import _extension as ext
assert ext.HAS_C, ext.C_IMPORT_ERROR
for op in ('splat_pool', 'splat_pool_backward', 'splat_combine', 'splat_combine_backward', 'splat_bn_stats',
           'splat_backward_reduce', 'splat_backward_input'):
    assert torch._C._dispatch_has_kernel_for_dispatch_key('resnest_fast::' + op, 'CUDA'), op + ': no CUDA kernel'
print('CUDA kernels registered for all seven ops; CPU kernels:', ext.HAS_CPU_KERNELS)")
echo "== CPU op tests against the CUDA build"
# The tests import resnest_fast from the source tree: run them on the installed wheel from a copy of tests/.
tmp=$(mktemp -d)
cp -r tests "$tmp/tests"
# source-level tests read these (the launch model compiles csrc/ headers; stage shapes come from benchmarks/);
# resnest_fast itself is not copied, so the package under test is the installed one
cp -r csrc "$tmp/csrc"
mkdir "$tmp/benchmarks" && cp benchmarks/*.py "$tmp/benchmarks/"
cp pyproject.toml "$tmp/"  # the markers (needs_cuda, heavy) and the default -m selection
(cd "$tmp" && RESNEST_FAST_REQUIRE_C=1 TRITON_INTERPRET=0 "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  tests/ops)
rm -rf "$tmp"
