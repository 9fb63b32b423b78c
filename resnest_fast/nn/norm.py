"""build_norm: the subset of mmcv's build_norm_layer that ResNeSt and its heads use (BN / BN2d / SyncBN)."""
from typing import Optional

from torch import nn

from resnest_fast.nn.sync_batchnorm import SyncBatchNorm

__all__ = ["build_norm"]

# SyncBN: torch's SyncBatchNorm on CUDA, our own synchronisation on CPU (gloo), a plain BatchNorm on one process.
_NORM_TYPES = {"BN": nn.BatchNorm2d, "BN2d": nn.BatchNorm2d, "SyncBN": SyncBatchNorm}


def build_norm(norm_cfg: Optional[dict], num_features: int, arg_name: str = "norm_cfg") -> nn.Module:
    """The norm layer of `norm_cfg` over `num_features` channels: type BN / BN2d / SyncBN, eps, momentum, affine,
    track_running_stats, requires_grad. SyncBN builds resnest_fast.nn.SyncBatchNorm (an nn.SyncBatchNorm that also
    syncs CPU tensors). Errors name `arg_name`."""
    if norm_cfg is None:
        raise ValueError(f"{arg_name} must be a dict like dict(type='BN'), got None (a norm layer is required)")
    if not isinstance(norm_cfg, dict) or "type" not in norm_cfg:
        raise ValueError(f"{arg_name} must be a dict with a 'type' key, got {norm_cfg!r}")
    cfg = dict(norm_cfg)
    kind = cfg.pop("type")
    if kind not in _NORM_TYPES:
        raise ValueError(f"{arg_name}['type'] must be one of {sorted(_NORM_TYPES)}, got {kind!r}")
    requires_grad = cfg.pop("requires_grad", True)
    unknown = set(cfg) - {"eps", "momentum", "affine", "track_running_stats"}
    if unknown:
        raise ValueError(f"{arg_name} has options this project does not support: {sorted(unknown)}")
    layer = _NORM_TYPES[kind](num_features, **cfg)
    for p in layer.parameters():
        p.requires_grad = requires_grad
    return layer
