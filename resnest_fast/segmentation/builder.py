"""build_model: a segmentor from a config (a shipped config's name, a .py file or a loaded dict), optionally
with a checkpoint's weights."""
from typing import Optional

from resnest_fast.checkpoint import load_checkpoint
from resnest_fast.segmentation.config import resolve_config
from resnest_fast.segmentation.segmentor import EncoderDecoder, build_segmentor

__all__ = ["build_model"]


def build_model(config, checkpoint: Optional[str] = None, backend: Optional[str] = None,
                strict: bool = True) -> EncoderDecoder:
    """The segmentor of a config (a shipped config's name, a .py file of ours or of mmseg 1.x, or an already loaded
    dict), with the weights of `checkpoint` (mmseg's format or ours) loaded through resnest_fast.load_checkpoint.
    Whatever the config, the model takes RGB images (see EncoderDecoder)."""
    cfg = resolve_config(config)
    if "model" not in cfg:
        raise ValueError(f"config {cfg.get('filename', '<dict>')!r} has no `model = dict(...)`")
    if not isinstance(cfg["model"], dict):
        raise TypeError(f"config {cfg.get('filename', '<dict>')!r}: `model` must be a dict, got {cfg['model']!r}")
    model = build_segmentor(cfg["model"], backend=backend)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, strict=strict)
    return model
