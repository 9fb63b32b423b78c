"""What was built and what can run: the C++ extension (CPU and CUDA kernels) and Triton.

`import resnest_fast` must work without either; the pure-PyTorch reference then runs, and one warning names what
is missing. Nothing here imports Triton (slow, and absent on many machines): HAS_TRITON only looks for the package.
"""
import importlib.util
import os
import warnings

import torch

try:
    from resnest_fast import _C  # noqa: F401  (importing runs the op registrations)

    HAS_C = True
    C_IMPORT_ERROR = None
except ImportError as exc:  # not built, or built against another torch
    HAS_C = False
    C_IMPORT_ERROR = exc


def _has_kernel(dispatch_key, op="splat_pool"):
    if not HAS_C:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"resnest_fast::{op}", dispatch_key)


HAS_CPU_KERNELS = _has_kernel("CPU")
HAS_CUDA_KERNELS = _has_kernel("CUDA")
HAS_TRITON = importlib.util.find_spec("triton") is not None
# The training-only ops (bn0 statistics, the two-pass backward), per device type.
TRAINING_KERNELS = {
    dev: all(_has_kernel(key, op) for op in ("splat_bn_stats", "splat_backward_reduce", "splat_backward_input"))
    for dev, key in (("cpu", "CPU"), ("cuda", "CUDA"))
}


def triton_interpreting():
    """Triton kernels run on CPU tensors only through its interpreter (TRITON_INTERPRET=1 before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _warn_missing():
    if HAS_C:
        return
    what = f"the C++ extension resnest_fast._C is not available ({C_IMPORT_ERROR})"
    run = "the pure-PyTorch reference" + (" (or Triton on CUDA tensors)" if HAS_TRITON else "")
    warnings.warn(
        f"resnest_fast: {what}; the split-attention ops will run {run}, which is correct but not fused. "
        "Rebuild with `pip install .` in this environment to get the kernels.",
        RuntimeWarning,
        stacklevel=3,
    )


_warn_missing()
