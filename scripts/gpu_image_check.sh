#!/usr/bin/env bash
# The lent GPU machines' software, rebuilt on this CPU machine, so that a GPU run is not lost to a version problem:
# a venv with their Python (3.12), torch (2.11.0, PyPI's CUDA 13.0 build, which pins Triton 3.6.0), numpy (2.5) and
# test tools, without mmsegmentation; a clone of HEAD built as scripts/gpu_check.sh builds it (FORCE_CUDA=1 for
# sm_90, --no-build-isolation --no-deps); then the whole test suite, the quick Triton compile check and the GPU
# check's dry run in it. Downloads about 3 GB from PyPI the first time (the venv is kept for the next run).
# Not part of CI. Run it when the image's versions change (/work/.library/device/KINDS.md lists them).
# Usage: bash scripts/gpu_image_check.sh   (GPU_IMAGE_PYTHON: a python3.12; GPU_IMAGE_VENV: where the venv goes)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
VENV=${GPU_IMAGE_VENV:-${TMPDIR:-/tmp}/resnest_fast_gpu_image_venv}
is_312() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; }
PY312=
if [ -n "${GPU_IMAGE_PYTHON:-}" ]; then
  if ! is_312 "$GPU_IMAGE_PYTHON"; then
    echo "gpu_image_check: GPU_IMAGE_PYTHON=$GPU_IMAGE_PYTHON is not a Python 3.12" >&2
    exit 2
  fi
  PY312=$GPU_IMAGE_PYTHON
else
  for candidate in python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
    if is_312 "$candidate"; then PY312=$candidate; break; fi
  done
  if [ -z "$PY312" ]; then
    echo "gpu_image_check: no Python 3.12 found (set GPU_IMAGE_PYTHON=/path/to/python3.12)" >&2
    exit 2
  fi
fi
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__ != '2.11.0+cu130')" 2>/dev/null; then
  echo "== creating $VENV ($("$PY312" --version)) with the GPU image's packages"
  rm -rf "$VENV"
  "$PY312" -m venv "$VENV"
  # the image's versions, not this machine's caps (pip's constraint file here caps torch to what lies on disk)
  PIP_CONSTRAINT=/dev/null "$VENV/bin/pip" install -q torch==2.11.0 torchvision==0.26.0 "numpy==2.5.*" pillow tqdm \
    cityscapesscripts timm pytest pytest-benchmark pytest-xdist pytest-timeout psutil pyyaml ninja \
    "setuptools>=64,<82" wheel
fi
"$VENV/bin/python" -c "import sys, torch, triton, numpy
print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__)"
src=$(mktemp -d)
git clone -q "$REPO" "$src"
cd "$src"
echo "== building $(git log --oneline -1 | cut -c1-60) as the GPU check does (FORCE_CUDA=1, sm_90)"
log=$(mktemp)
if ! FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-2} \
    "$VENV/bin/pip" install -v --no-build-isolation --no-deps -e . >"$log" 2>&1; then
  tail -40 "$log"
  echo "gpu_image_check: the build FAILED (full log: $log)"
  exit 1
fi
"$VENV/bin/python" -m resnest_fast info
echo "== the test suite"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests benchmarks
echo "== Triton's compiler (the image's version): the quick set for sm_80 and sm_90"
TRITON_INTERPRET=0 "$VENV/bin/python" scripts/triton_compile_check.py --quick | sed -n '/ compiles (/,$p'
echo "== the GPU check's dry run"
PYTHON=$VENV/bin/python OUT=$(mktemp -d) bash scripts/gpu_check.sh --dry-run | tail -3
rm -rf "$src"
echo "gpu_image_check: passed"
