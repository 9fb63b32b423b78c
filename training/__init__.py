"""resnest_fast.training: the segmentation side: decode heads, the encoder-decoder segmentor, configs with mmseg's
file names, data, and the commands `infer` (training.infer), `train` (training.train: mmseg's schedule, DDP under
torchrun, checkpoints and exact resume) and `test` (training.evaluate: mIoU, whole/slide, multi-scale + flip TTA)."""
from typing import Optional

from resnest_fast.training.config import list_configs, load_config
from resnest_fast.training.segmentor import EncoderDecoder, build_segmentor

__all__ = ["EncoderDecoder", "build_segmentor", "build_model", "load_config", "list_configs"]


def build_model(config, checkpoint: Optional[str] = None, backend: Optional[str] = None, strict: bool = True):
    """The segmentor of a config (a shipped config's name, a .py file, or an already loaded dict), with the
    weights of `checkpoint` (mmseg's format or ours) loaded through resnest_fast.load_checkpoint."""
    cfg = config if isinstance(config, dict) else load_config(config)
    model = build_segmentor(cfg["model"], backend=backend)
    if checkpoint is not None:
        from resnest_fast.checkpoint import load_checkpoint

        load_checkpoint(model, checkpoint, strict=strict)
    return model
