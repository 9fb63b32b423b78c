"""Named ResNeSt backbones (timm-style factories over a table of default configurations).

`resnest101_d8()` is the backbone of mmseg's ResNeSt segmenters (`resnest_s101-d8_*` configs): output stride 8
through dilation. The plain `resnestXX()` are the classification layout (output stride 32). Keyword arguments
override the table, e.g. `resnest101_d8(out_indices=(3,), norm_cfg=dict(type='SyncBN'))`.
"""
from typing import Dict, List

from resnest_fast.models.resnest import ResNeSt

__all__ = [
    "default_cfgs",
    "create_backbone",
    "list_backbones",
    "resnest50",
    "resnest50_d8",
    "resnest101",
    "resnest101_d8",
    "resnest152",
    "resnest152_d8",
    "resnest200",
    "resnest200_d8",
    "resnest269",
    "resnest269_d8",
]

_D8 = dict(strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), contract_dilation=True)
_COMMON = dict(radix=2, reduction_factor=4, avg_down_stride=True, groups=1, base_width=4)

# name -> constructor arguments of ResNeSt. Stem widths are those of the ResNeSt paper (and mmseg's configs):
# 64 for S-50, 128 for S-101 and deeper.
default_cfgs: Dict[str, dict] = {
    "resnest50": dict(depth=50, stem_channels=64, **_COMMON),
    "resnest50_d8": dict(depth=50, stem_channels=64, **_COMMON, **_D8),
    "resnest101": dict(depth=101, stem_channels=128, **_COMMON),
    "resnest101_d8": dict(depth=101, stem_channels=128, **_COMMON, **_D8),
    "resnest152": dict(depth=152, stem_channels=128, **_COMMON),
    "resnest152_d8": dict(depth=152, stem_channels=128, **_COMMON, **_D8),
    "resnest200": dict(depth=200, stem_channels=128, **_COMMON),
    "resnest200_d8": dict(depth=200, stem_channels=128, **_COMMON, **_D8),
    "resnest269": dict(depth=269, stem_channels=128, **_COMMON),
    "resnest269_d8": dict(depth=269, stem_channels=128, **_COMMON, **_D8),
}


def create_backbone(name: str, **kwargs) -> ResNeSt:
    """Builds the backbone `name` (a key of default_cfgs), with `kwargs` overriding its configuration."""
    if name not in default_cfgs:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(default_cfgs)}")
    return ResNeSt(**{**default_cfgs[name], **kwargs})


def list_backbones() -> List[str]:
    return sorted(default_cfgs)


def resnest50(**kwargs) -> ResNeSt:
    """ResNeSt-50 (stem 64), output stride 32; kwargs override default_cfgs['resnest50']."""
    return create_backbone("resnest50", **kwargs)


def resnest50_d8(**kwargs) -> ResNeSt:
    """ResNeSt-50 (stem 64), dilated to output stride 8; kwargs override default_cfgs['resnest50_d8']."""
    return create_backbone("resnest50_d8", **kwargs)


def resnest101(**kwargs) -> ResNeSt:
    """ResNeSt-101 (stem 128), output stride 32; kwargs override default_cfgs['resnest101']."""
    return create_backbone("resnest101", **kwargs)


def resnest101_d8(**kwargs) -> ResNeSt:
    """ResNeSt-101 (stem 128), dilated to output stride 8: mmseg's resnest_s101-d8 backbone; kwargs override
    default_cfgs['resnest101_d8']."""
    return create_backbone("resnest101_d8", **kwargs)


def resnest152(**kwargs) -> ResNeSt:
    """ResNeSt-152 (stem 128), output stride 32; kwargs override default_cfgs['resnest152']."""
    return create_backbone("resnest152", **kwargs)


def resnest152_d8(**kwargs) -> ResNeSt:
    """ResNeSt-152 (stem 128), dilated to output stride 8; kwargs override default_cfgs['resnest152_d8']."""
    return create_backbone("resnest152_d8", **kwargs)


def resnest200(**kwargs) -> ResNeSt:
    """ResNeSt-200 (stem 128), output stride 32; kwargs override default_cfgs['resnest200']."""
    return create_backbone("resnest200", **kwargs)


def resnest200_d8(**kwargs) -> ResNeSt:
    """ResNeSt-200 (stem 128), dilated to output stride 8; kwargs override default_cfgs['resnest200_d8']."""
    return create_backbone("resnest200_d8", **kwargs)


def resnest269(**kwargs) -> ResNeSt:
    """ResNeSt-269 (stem 128), output stride 32; kwargs override default_cfgs['resnest269']."""
    return create_backbone("resnest269", **kwargs)


def resnest269_d8(**kwargs) -> ResNeSt:
    """ResNeSt-269 (stem 128), dilated to output stride 8; kwargs override default_cfgs['resnest269_d8']."""
    return create_backbone("resnest269_d8", **kwargs)
