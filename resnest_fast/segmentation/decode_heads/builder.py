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

# mmseg BaseDecodeHead arguments these heads do not implement: accepted only at the value that changes nothing.
_MMSEG_DEFAULT_ONLY = {
    "conv_cfg": [None],
    "act_cfg": [dict(type="ReLU"), dict(type="ReLU", inplace=True), dict(type="ReLU", inplace=False)],
    "input_transform": [None],
    "sampler": [None],
    "threshold": [None],
    "init_cfg": [None, dict(type="Normal", std=0.01, override=dict(name="conv_seg"))],
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

    `type` is one of HEADS. Unknown keys raise ValueError naming them; mmseg options that are not implemented
    (conv_cfg, act_cfg, input_transform, sampler, threshold, init_cfg, out_channels) are accepted only at the
    value that leaves the head unchanged, and raise ValueError otherwise.
    """
    if not isinstance(cfg, dict):
        raise TypeError(f"cfg must be a dict with a 'type' key, got {type(cfg).__name__}")
    cfg = dict(cfg)
    kind = cfg.pop("type", None)
    if kind not in HEADS:
        raise ValueError(f"cfg['type'] must be one of {sorted(HEADS)}, got {kind!r}")
    cls = HEADS[kind]
    for key, accepted in _MMSEG_DEFAULT_ONLY.items():
        if key in cfg:
            value = cfg.pop(key)
            if value not in accepted:
                only = " or ".join(repr(a) for a in accepted)
                raise ValueError(f"{kind}: {key}={value!r} is not supported (only {only})")
    if "out_channels" in cfg:
        out_channels = cfg.pop("out_channels")
        if out_channels is not None and out_channels != cfg.get("num_classes"):
            raise ValueError(
                f"{kind}: out_channels={out_channels!r} is not supported (only None or num_classes; binary "
                "segmentation with one output channel is not implemented)"
            )
    allowed, required = _head_arguments(cls)
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(f"{kind} got unknown config keys {unknown}; it accepts {sorted(allowed)}")
    missing = sorted(required - set(cfg))
    if missing:
        raise ValueError(f"{kind} config is missing {missing}")
    return cls(**cfg)
