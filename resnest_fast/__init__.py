"""resnest_fast: fused split-attention kernels behind a drop-in ResNeSt backbone.

    import resnest_fast
    resnest_fast.nn.SplitAttentionConv2d(...)       # drop-in for mmseg's module, same state_dict
    resnest_fast.ops.splat_pool / splat_combine      # the fused ops
    resnest_fast.set_default_backend("reference")    # or RESNEST_FAST_BACKEND=...
    python -m resnest_fast info                      # what was built and what runs
    resnest_fast.export.export_program / export_onnx # deployment (torch.export, ONNX, TorchScript tracing)
    resnest_fast.segmentation.build_model(name)      # mmseg's ResNeSt segmenters, configs by mmseg's names
"""
from resnest_fast import _extension  # noqa: F401  (loads _C, warns once if it is missing)
from resnest_fast import export, nn, ops
from resnest_fast.backend import BACKENDS, get_default_backend, resolve_backend, set_default_backend
from resnest_fast.checkpoint import CheckpointError, load_checkpoint
from resnest_fast.conversion import convert
from resnest_fast.info import build_info
from resnest_fast.optimize import optimize_for_inference
from resnest_fast.version import __version__

__all__ = [
    "nn",
    "ops",
    "export",
    "BACKENDS",
    "get_default_backend",
    "set_default_backend",
    "resolve_backend",
    "build_info",
    "load_checkpoint",
    "convert",
    "optimize_for_inference",
    "CheckpointError",
    "__version__",
]
