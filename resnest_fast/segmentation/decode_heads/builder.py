"""build_head: a decode head from mmseg's config dict."""
import inspect
from typing import Dict, Tuple

from resnest_fast.segmentation.decode_heads.aspp_head import ASPPHead, DepthwiseSeparableASPPHead
from resnest_fast.segmentation.decode_heads.decode_head import BaseDecodeHead
from resnest_fast.segmentation.decode_heads.fcn_head import FCNHead
from resnest_fast.segmentation.decode_heads.psp_head import PSPHead

__all__ = ["HEADS", "build_head"]

HEADS: Dict[str, type] = {
    "FCNHead": FCNHead,
    "PSPHead": PSPHead,
    "ASPPHead": ASPPHead,
    "DepthwiseSeparableASPPHead": DepthwiseSeparableASPPHead,
}


def _head_arguments(cls: type) -> Tuple[set, set]:
    """(all, required) keyword arguments of a head class and of the BaseDecodeHead classes it extends."""
    names, required = set(), set()
    for klass in cls.__mro__:
        if not issubclass(klass, BaseDecodeHead):
            continue
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.name == "self":
                continue
            names.add(p.name)
            if p.default is p.empty:
                required.add(p.name)
    return names, required


def build_head(cfg: dict) -> BaseDecodeHead:
    """A head from mmseg's config dict (`model.decode_head` / `model.auxiliary_head`), e.g.
    dict(type='PSPHead', in_channels=2048, in_index=3, channels=512, pool_scales=(1, 2, 3, 6), dropout_ratio=0.1,
    num_classes=19, norm_cfg=dict(type='SyncBN', requires_grad=True), align_corners=False,
    loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)).

    `type` is one of HEADS; the other keys are the head's arguments (mmseg's). Unknown keys raise ValueError naming
    them; mmseg options the heads do not implement are accepted at their default and raise ValueError otherwise
    (see BaseDecodeHead).
    """
    if not isinstance(cfg, dict):
        raise TypeError(f"cfg must be a dict with a 'type' key, got {type(cfg).__name__}")
    cfg = dict(cfg)
    kind = cfg.pop("type", None)
    if kind not in HEADS:
        raise ValueError(f"cfg['type'] must be one of {sorted(HEADS)}, got {kind!r}")
    cls = HEADS[kind]
    allowed, required = _head_arguments(cls)
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(f"{kind} got unknown config keys {unknown}; it accepts {sorted(allowed)}")
    missing = sorted(required - set(cfg))
    if missing:
        raise ValueError(f"{kind} config is missing {missing}")
    return cls(**cfg)
