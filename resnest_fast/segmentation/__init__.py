"""The segmentation models of mmsegmentation's ResNeSt table as a library layer: decode heads, the
encoder-decoder segmentor, configs with mmseg's file names, `build_model` / `load_model`, and single-image
inference (mmseg's test pipeline). Nothing here imports the training package."""
from resnest_fast.segmentation.builder import build_model
from resnest_fast.segmentation.config import list_configs, load_config, resolve_config
from resnest_fast.segmentation.decode_heads import HEADS, BaseDecodeHead, build_head
from resnest_fast.segmentation.inference import load_model, predict_scores, segment_image, slide_defaults
from resnest_fast.segmentation.segmentor import EncoderDecoder, build_backbone, build_segmentor

__all__ = [
    "EncoderDecoder",
    "BaseDecodeHead",
    "HEADS",
    "build_backbone",
    "build_head",
    "build_segmentor",
    "build_model",
    "load_model",
    "load_config",
    "resolve_config",
    "list_configs",
    "predict_scores",
    "segment_image",
    "slide_defaults",
]
