# Sourced by run.sh and test.sh: installs what the project needs into the current Python environment.
# torch is pinned to the CPU build by its local version (+cpu): without it pip may resolve a multi-GB CUDA build.
set -euo pipefail
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${RESNEST_FAST_TORCH:-torch==2.13.0+cpu}
echo "== installing $TORCH_SPEC, triton and the build tools"
"$PYTHON" -m pip install -q "$TORCH_SPEC" triton ninja "setuptools>=64" wheel numpy
