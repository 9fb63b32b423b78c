"""`python -m resnest_fast info`: what was built, which backend runs for CPU and CUDA tensors, and which kernels run
the training-only ops there (bn0's batch statistics and the split attention's two-pass fused backward)."""
import platform

import torch

from resnest_fast import _extension as ext
from resnest_fast.backend import ENV_VAR, available_backends, get_default_backend, resolve_backend, training_backend

UNFUSED_TRAINING = "reference (torch.var_mean and op-level autograd)"


def _has_winograd() -> bool:
    """Whether optimize_for_inference can run the wide 3x3 convs as Winograd F(2x2, 3x3) (resnest_fast.ops.winograd)."""
    from resnest_fast.ops.winograd import HAS_WINOGRAD_KERNELS

    return HAS_WINOGRAD_KERNELS


def build_info() -> dict:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    runs, trains = {}, {}
    for dev in devices:
        try:
            runs[dev] = resolve_backend(None, torch.device(dev))
            trains[dev] = training_backend(None, torch.device(dev)) or UNFUSED_TRAINING
        except (RuntimeError, ValueError) as exc:
            runs[dev] = trains[dev] = f"error: {exc}"
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "extension_C": ext.HAS_C,
        "extension_error": None if ext.HAS_C else str(ext.C_IMPORT_ERROR),
        "cpu_kernels": ext.HAS_CPU_KERNELS,
        "cuda_kernels": ext.HAS_CUDA_KERNELS,
        "winograd_cpu_kernel": _has_winograd(),
        "triton_installed": ext.HAS_TRITON,
        "triton_interpreter": ext.triton_interpreter_problem() or ext.triton_interpreting(),
        "default_backend": f"{get_default_backend()} ({ENV_VAR})",
        "available": {dev: available_backends(dev) for dev in ("cpu", "cuda")},
        "runs": runs,
        "trains": trains,
    }


def format_info(info: dict) -> str:
    width = max(len(k) for k in info)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in info.items())
