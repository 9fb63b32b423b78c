#!/usr/bin/env bash
# Sets up this machine and runs the test suite (heavy shapes: add `-m heavy`; GPU tests skip without a GPU).
# The real mmsegmentation is installed as the independent reference of the parity tests (never a runtime need).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_env.sh
echo "== installing the test tools and the reference (mmsegmentation 1.2.2 on mmcv-lite)"
pip_install -q "$TORCH_SPEC" pytest pytest-benchmark pytest-timeout mmengine==0.10.7 mmcv-lite==2.1.0 \
  mmsegmentation==1.2.2 ftfy regex pillow tqdm cityscapesscripts onnx onnxscript onnxruntime openvino==2026.4.1
# timm's SplitAttn and ResNeSt are references of convert() and load_pretrained(); timm would pull torchvision (and
# another torch), so only its source is installed and tests/timm_reference.py imports it without torchvision
pip_install -q --no-deps timm
# the original ResNeSt release, the reference of load_pretrained's layout (its torch models are plain PyTorch; its
# declared dependencies, nose among them, are for code the tests never import)
pip_install -q --no-deps resnest==0.0.5
echo "== building and installing resnest_fast as a wheel, checked from outside the source tree"
"$PYTHON" -m pip install -q .
(cd "${TMPDIR:-/tmp}" && "$PYTHON" -c "
import resnest_fast, resnest_fast.kernels
from resnest_fast import _extension as ext
from resnest_fast.segmentation import list_configs, load_config
import resnest_fast.training, resnest_fast.cli
assert ext.HAS_C and ext.HAS_CPU_KERNELS, ext.C_IMPORT_ERROR
assert len(list_configs()) >= 8 and load_config(list_configs()[0])['model'], 'configs missing from the wheel'
print('wheel install OK:', resnest_fast.__file__)")
echo "== editable install for the tests"
"$PYTHON" -m pip install -q -e .
RESNEST_FAST_REQUIRE_C=1 RESNEST_FAST_REQUIRE_MMSEG=1 "$PYTHON" -m pytest -p no:cacheprovider -q "$@"
