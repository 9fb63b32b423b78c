#!/usr/bin/env bash
# Compiles the CUDA kernels (csrc/ops/cuda/*.cu) for sm_80 and sm_90 as torch.utils.cpp_extension would (setup.py's
# nvcc flags: -O3 --use_fast_math -lineinfo), with -Xptxas -v, and reads the result; no GPU needed:
#   1. ptxas: registers per kernel; any spill (stores or loads) in a float/half/bfloat16 instance fails the check
#      (double instances may spill: they are the correctness path, not the fast one);
#   2. machine code (cuobjdump -sass): in every main-pass kernel (pool, pool_backward, combine, combine_backward,
#      bn_stats, backward_reduce, backward_input; both layouts), some basic block issues >= 4 independent global
#      loads. Heuristic: within a basic block (split at labels and branches), count the LDG instructions issued
#      before the first instruction that reads a register one of them wrote; the kernel passes when its best block
#      counts >= 4, or, where the rows are aligned, one 128-bit LDG per input carries the same bytes (reported as
#      "vec" in the table).
# Headers: torch's CUDA build (2.14.1) from the local package index (pip download, headers only unzipped) and the
# CUDA library headers it includes (the nvidia-* wheels it pins), cached in $RESNEST_FAST_CUDA_HEADERS. Or point
# TORCH_CUDA_INCLUDE at a directory holding torch/include and nvidia/*/include (a CUDA venv's site-packages).
# Env: NVCC (default: nvcc on PATH, else /usr/local/bin/nvcc), CUDA_ARCHS (default "80 90"), KEEP=1 keeps the work
# directory. Takes ~4-6 minutes on 2 cores (both archs compile in parallel).
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/bin/nvcc)}
ARCHS=${CUDA_ARCHS:-80 90}
TORCH_PIN=${RESNEST_FAST_CUDA_TORCH:-torch==2.14.1}
CACHE=${RESNEST_FAST_CUDA_HEADERS:-${TMPDIR:-/tmp}/resnest_fast_cuda_headers}
PY=${PYTHON:-python3}
[ -x "$NVCC" ] || { echo "cuda_compile_check: no nvcc (set NVCC)"; exit 2; }
CUOBJDUMP=${CUOBJDUMP:-$(command -v cuobjdump || true)}
if [ -z "$CUOBJDUMP" ]; then  # shipped inside the triton wheel
  CUOBJDUMP=$("$PY" -c 'import triton, os; print(os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump"))' 2>/dev/null || true)
fi
[ -x "$CUOBJDUMP" ] || { echo "cuda_compile_check: no cuobjdump (set CUOBJDUMP, or install triton)"; exit 2; }

if [ -n "${TORCH_CUDA_INCLUDE:-}" ]; then
  ROOT_INC=$TORCH_CUDA_INCLUDE
else
  ROOT_INC=$CACHE
  if [ ! -f "$CACHE/.complete" ]; then
    echo "== unpacking torch's CUDA headers ($TORCH_PIN) into $CACHE"
    rm -rf "$CACHE" && mkdir -p "$CACHE/wheels"
    "$PY" -m pip download -q --no-deps "$TORCH_PIN" -d "$CACHE/wheels"
    whl=$(ls "$CACHE"/wheels/torch-*.whl)
    unzip -q -o "$whl" 'torch/include/*' -d "$CACHE"
    # The CUDA library headers ATen/cuda/CUDAContext.h includes (cublas, cusparse, cusolver, curand, cufft): torch
    # pins cuda-toolkit, which pins the nvidia-* wheels that hold them.
    ctk=$(unzip -p "$whl" '*.dist-info/METADATA' | sed -n 's/^Requires-Dist: \(cuda-toolkit\)\[[^]]*\]\([^;]*\).*/\1\2/p' | tr -d ' ')
    "$PY" -m pip download -q --no-deps "$ctk" -d "$CACHE/wheels"
    pins=$(unzip -p "$CACHE"/wheels/cuda_toolkit-*.whl '*.dist-info/METADATA' \
      | sed -n 's/^Requires-Dist: \(nvidia-\(cublas\|cusparse\|cusolver\|curand\|cufft\)\)[^=]*\(==[^;]*\);.*/\1\3/p' \
      | tr -d ' ' | sort -u)
    for pin in $pins; do "$PY" -m pip download -q --no-deps "$pin" -d "$CACHE/wheels"; done
    for w in "$CACHE"/wheels/nvidia_*.whl; do unzip -q -o "$w" '*/include/*' -d "$CACHE" || true; done
    rm -rf "$CACHE/wheels"
    touch "$CACHE/.complete"
  fi
fi
INCLUDES=(-I csrc -I "$ROOT_INC/torch/include" -I "$ROOT_INC/torch/include/torch/csrc/api/include")
for d in "$ROOT_INC"/nvidia/*/include; do [ -d "$d" ] && INCLUDES+=(-I "$d"); done

WORK=$(mktemp -d)
[ "${KEEP:-0}" = 1 ] && echo "== work directory: $WORK" || trap 'rm -rf "$WORK"' EXIT
GENCODE=()
for a in $ARCHS; do GENCODE+=(-gencode "arch=compute_$a,code=sm_$a"); done
status=0
for cu in csrc/ops/cuda/*.cu; do
  name=$(basename "$cu" .cu)
  echo "== nvcc $cu for sm_${ARCHS// /, sm_} ($("$NVCC" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'))"
  start=$(date +%s)
  if ! "$NVCC" -std=c++20 -c "$cu" -o "$WORK/$name.o" "${INCLUDES[@]}" "${GENCODE[@]}" --threads 2 \
      -O3 --use_fast_math -lineinfo -Xptxas -v -Xcompiler -fPIC --expt-relaxed-constexpr \
      -DTORCH_EXTENSION_NAME=_C -DTORCH_API_INCLUDE_EXTENSION_H -D_GLIBCXX_USE_CXX11_ABI=1 \
      -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
      -D__CUDA_NO_HALF2_OPERATORS__ >"$WORK/$name.ptxas.log" 2>&1; then
    grep -E "error" "$WORK/$name.ptxas.log" | head -20 || tail -40 "$WORK/$name.ptxas.log"
    echo "nvcc FAILED on $cu"
    exit 1
  fi
  echo "   compiled in $(( $(date +%s) - start )) s"
  for a in $ARCHS; do "$CUOBJDUMP" -sass -arch "sm_$a" "$WORK/$name.o" >"$WORK/$name.sm_$a.sass"; done
  "$PY" scripts/cuda_sass_check.py --ptxas "$WORK/$name.ptxas.log" --sass "$WORK"/"$name".sm_*.sass || status=1
done
[ $status = 0 ] && echo "CUDA compile check passed" || echo "CUDA compile check FAILED"
exit $status
