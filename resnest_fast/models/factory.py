"""Named ResNeSt backbones (timm-style factories over a table of default configurations).

`resnest101_d8()` is the backbone of mmseg's ResNeSt segmenters (`resnest_s101-d8_*` configs): output stride 8
through dilation. The plain `resnestXX()` are the classification layout (output stride 32). Keyword arguments
override the table, e.g. `resnest101_d8(out_indices=(3,), norm_cfg=dict(type='SyncBN'))`.
"""
from typing import Callable, Dict

from resnest_fast.models.resnest import ResNeSt

__all__ = ["default_cfgs", "create_backbone", "list_backbones"]

_D8 = dict(strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), contract_dilation=True)
_COMMON = dict(radix=2, reduction_factor=4, avg_down_stride=True, groups=1, base_width=4)

# name -> constructor arguments of ResNeSt. Stem widths are those of the ResNeSt paper (and mmseg's configs):
# 64 for S-50, 128 for S-101 and deeper.
default_cfgs: Dict[str, dict] = {}
for _depth, _stem in ((50, 64), (101, 128), (152, 128), (200, 128), (269, 128)):
    default_cfgs[f"resnest{_depth}"] = dict(depth=_depth, stem_channels=_stem, **_COMMON)
    default_cfgs[f"resnest{_depth}_d8"] = dict(depth=_depth, stem_channels=_stem, **_COMMON, **_D8)


def create_backbone(name: str, **kwargs) -> ResNeSt:
    """Builds the backbone `name` (a key of default_cfgs), with `kwargs` overriding its configuration."""
    if name not in default_cfgs:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(default_cfgs)}")
    return ResNeSt(**{**default_cfgs[name], **kwargs})


def list_backbones():
    return sorted(default_cfgs)


def _factory(name: str) -> Callable[..., ResNeSt]:
    def build(**kwargs) -> ResNeSt:
        return create_backbone(name, **kwargs)

    cfg = default_cfgs[name]
    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"ResNeSt-{cfg['depth']}{' D8 (dilated, output stride 8)' if 'dilations' in cfg else ''}: {cfg}"
    return build


for _name in default_cfgs:
    globals()[_name] = _factory(_name)
    __all__.append(_name)
