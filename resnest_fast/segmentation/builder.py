"""build_model: a segmentor from a config (a shipped config's name, a .py file or a loaded dict), optionally
with a checkpoint's weights."""
import os
from typing import Optional

from resnest_fast.checkpoint import load_checkpoint
from resnest_fast.segmentation.config import load_config
from resnest_fast.segmentation.segmentor import EncoderDecoder, build_segmentor

__all__ = ["build_model"]


def build_model(config, checkpoint: Optional[str] = None, backend: Optional[str] = None,
                strict: bool = True) -> EncoderDecoder:
    """The segmentor of a config (a shipped config's name, a .py file, or an already loaded dict), with the
    weights of `checkpoint` (mmseg's format or ours) loaded through resnest_fast.load_checkpoint."""
    if not isinstance(config, (dict, str, os.PathLike)):
        raise TypeError(f"config must be a shipped config's name, a .py file or a config dict, got {config!r}")
    cfg = config if isinstance(config, dict) else load_config(config)
    if "model" not in cfg:
        raise ValueError(f"config {cfg.get('filename', '<dict>')!r} has no `model = dict(...)`")
    if not isinstance(cfg["model"], dict):
        raise TypeError(f"config {cfg.get('filename', '<dict>')!r}: `model` must be a dict, got {cfg['model']!r}")
    model = build_segmentor(cfg["model"], backend=backend)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, strict=strict)
    return model
