"""build_norm: the subset of mmcv's build_norm_layer that ResNeSt and its heads use (BN / BN2d / SyncBN); and
check_conv_cfg, the subset of mmcv's build_conv_layer they use (a plain Conv2d)."""
from typing import Optional

from torch import nn

from resnest_fast.nn.sync_batchnorm import SyncBatchNorm

__all__ = ["build_norm", "check_conv_cfg"]

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


def check_conv_cfg(conv_cfg: Optional[dict], arg_name: str = "conv_cfg") -> None:
    """mmcv's conv_cfg restricted to a plain nn.Conv2d: None, dict(type='Conv2d') or dict(type='Conv'); ValueError
    naming `arg_name` otherwise."""
    if conv_cfg is not None and (not isinstance(conv_cfg, dict) or conv_cfg.get("type") not in ("Conv", "Conv2d")
                                 or set(conv_cfg) != {"type"}):
        raise ValueError(f"{arg_name} must be None or dict(type='Conv2d'), got {conv_cfg!r}")
