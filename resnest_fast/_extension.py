"""What was built and what can run: the C++ extension (CPU and CUDA kernels) and Triton.

`import resnest_fast` must work without either; the pure-PyTorch reference then runs, and one warning names what
is missing. Nothing here imports Triton (slow, and absent on many machines): HAS_TRITON only looks for the package.
"""
import functools
import importlib.metadata
import importlib.util
import os
import warnings
from typing import Optional

import torch
from torch.torch_version import TorchVersion

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


@functools.cache  # metadata is read from disk; resolve_backend asks on every op call
def installed_version(dist: str) -> Optional[TorchVersion]:
    try:
        return TorchVersion(importlib.metadata.version(dist))
    except importlib.metadata.PackageNotFoundError:
        return None


def triton_interpreter_problem() -> Optional[str]:
    """Why Triton's interpreter cannot run the kernels in this environment, or None (also when not interpreting).

    Triton 3.6 and older convert one-element arrays to Python ints in the interpreter, which numpy 2.4 refuses: every
    kernel with a loop over tensor bounds fails inside Triton (Triton 3.7 and numpy 2.3 are both fine)."""
    if not (HAS_TRITON and triton_interpreting()):
        return None
    triton_version, numpy_version = installed_version("triton"), installed_version("numpy")
    if triton_version is not None and numpy_version is not None and triton_version < (3, 7) \
            and numpy_version >= (2, 4):
        return (f"Triton {triton_version}'s interpreter cannot run with numpy {numpy_version} (it calls int() on "
                "one-element arrays, which numpy 2.4 refuses): install numpy<2.4 or triton>=3.7")
    return None


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
