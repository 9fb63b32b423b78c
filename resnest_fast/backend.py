"""Backend choice for the fused split-attention ops.

Names: "auto" (default), "cpu" and "cuda" (the C++ extension's kernels for tensors on that device), "triton",
"reference" (pure PyTorch). The default comes from the environment variable RESNEST_FAST_BACKEND, and
`set_default_backend` changes it at run time. "auto" picks, for the device of the input:
CUDA tensors: cuda kernels if built, else Triton if installed, else the reference;
CPU tensors: cpu kernels if built, else the reference.
An explicit backend that cannot run raises an error that says what is missing.
"""
import os

import torch

from resnest_fast import _extension as ext

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")
ENV_VAR = "RESNEST_FAST_BACKEND"


def normalize_backend(name, where="backend"):
    """`name` lower-cased if it is one of BACKENDS, None for None; a ValueError that names `where` otherwise."""
    if name is None:
        return None
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"{where} must be one of {BACKENDS} or None, got {name!r}")
    return name.lower()


def environment_backend():
    """The backend that ENV_VAR names ("auto" when it is unset or empty); a ValueError naming the variable when it
    names none. The commands call it first, to refuse a bad value in one line."""
    value = os.environ.get(ENV_VAR) or "auto"
    if value.lower() not in BACKENDS:
        raise ValueError(f"environment variable {ENV_VAR} must be one of {', '.join(BACKENDS)} (or unset), "
                         f"got {value!r}")
    return value.lower()


# A bad value is not raised here: importing the package must work for the commands to say what is wrong in one
# line (their entry point imports it first); whatever needs the default raises it instead.
try:
    _default = environment_backend()
    _environment_error = None
except ValueError as err:
    _default, _environment_error = None, str(err)


def get_default_backend():
    """The backend used when an op or module is given backend=None; a ValueError when ENV_VAR names no backend
    and set_default_backend was not called."""
    if _default is None:
        raise ValueError(f"{_environment_error} (or call resnest_fast.set_default_backend)")
    return _default


def set_default_backend(name):
    """Sets the backend used when an op or module is given backend=None; returns the previous default (None
    when ENV_VAR named no backend)."""
    global _default
    previous = _default
    _default = normalize_backend(name, "backend") or "auto"
    return previous


def functorch_transforms_active() -> bool:
    """Whether a torch.func transform (vmap, grad, jacrev, ...) is running. The kernels' ops have no batching rule,
    and their autograd (an autograd.Function without setup_context) cannot go through these transforms, so the
    reference runs there. Private in torch: False where it is missing."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active()) if active is not None else False


def resolve_backend(backend, device):
    """The concrete backend ("cpu", "cuda", "triton" or "reference") that runs for tensors on `device`: the
    reference under a torch.func transform (functorch_transforms_active), once the backend asked for is known to
    be available."""
    impl = _resolve_backend(backend, device)
    return "reference" if impl != "reference" and functorch_transforms_active() else impl


def _resolve_backend(backend, device):
    name = normalize_backend(backend, "backend") or get_default_backend()
    dev = device.type
    if name == "auto":
        if dev == "cuda":
            if ext.HAS_CUDA_KERNELS:
                return "cuda"
            return "triton" if ext.HAS_TRITON else "reference"
        if dev == "cpu" and ext.HAS_CPU_KERNELS:
            return "cpu"
        return "reference"
    if name == "reference":
        return name
    if name in ("cpu", "cuda"):
        # what is missing from the build first: no choice of device can help then
        if not (ext.HAS_CPU_KERNELS if name == "cpu" else ext.HAS_CUDA_KERNELS):
            why = ("resnest_fast._C was not built" if not ext.HAS_C
                   else f"resnest_fast._C was built without {name} kernels")
            hint = " (rebuild with FORCE_CUDA=1 pip install . where nvcc is)" if name == "cuda" else ""
            raise RuntimeError(f"backend={name!r} is not available: {why}{hint}")
        if dev != name:
            raise ValueError(f"backend={name!r} runs on {name} tensors, but the input is on {device}")
        return name
    # triton
    if not ext.HAS_TRITON:
        raise RuntimeError("backend='triton' is not available: the triton package is not installed")
    if dev != "cuda" and not (dev == "cpu" and ext.triton_interpreting()):
        raise ValueError(
            f"backend='triton' needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set before importing "
            f"resnest_fast; the input is on {device}"
        )
    problem = ext.triton_interpreter_problem() if dev == "cpu" else None
    if problem:
        raise RuntimeError(f"backend='triton' is not available on CPU tensors: {problem}")
    return "triton"


def check_backend(backend, device):
    """resolve_backend for callers that check before any work (the commands), rather than at the first forward:
    every reason the backend cannot run on `device` is a ValueError, which says where the name came from when
    `backend` is None (the default: ENV_VAR or set_default_backend)."""
    try:
        return resolve_backend(backend, device)
    except (ValueError, RuntimeError) as exc:
        if backend is None and _default is not None:
            raise ValueError(f"{exc} (the default backend, from {ENV_VAR} or set_default_backend)") from exc
        raise ValueError(str(exc)) from exc


def training_backend(backend, device):
    """The backend whose kernels run the training-only ops (splat_bn_stats and the module's two-pass fused backward,
    splat_backward_reduce and splat_backward_input) for tensors on `device`: "cpu" or "cuda" where resnest_fast._C
    has them, "triton", or None where the reference (torch.var_mean, op-level autograd) runs instead."""
    impl = resolve_backend(backend, device)
    if impl == "triton" or (impl in ("cpu", "cuda") and ext.TRAINING_KERNELS[impl]):
        return impl
    return None


def training_op(name, backend, device):
    """The op resnest_fast::<name> (resnest_fast::triton_<name> for Triton) that training_backend picks, or None."""
    impl = training_backend(backend, device)
    if impl is None:
        return None
    return getattr(torch.ops.resnest_fast, f"triton_{name}" if impl == "triton" else name)


def available_backends(device_type):
    """Concrete backends that can run on tensors of `device_type` here."""
    out = ["reference"]
    if device_type == "cpu" and ext.HAS_CPU_KERNELS:
        out.append("cpu")
    if device_type == "cuda" and ext.HAS_CUDA_KERNELS:
        out.append("cuda")
    interpreted = ext.triton_interpreting() and not ext.triton_interpreter_problem()
    if ext.HAS_TRITON and (device_type == "cuda" or interpreted):
        out.append("triton")
    return out
