"""Segmenting images with a model: mmseg's test pipeline and post-processing, shared by the commands and by
evaluation over a dataset.

One image: the uint8 RGB image resized keeping its ratio to a test scale (mmcv's rescale rule, `resize_image`),
whole-image or sliding-window logits (`EncoderDecoder.inference`), logits resized bilinearly back to the original
size with the model's align_corners (mmseg's `postprocess_result`), argmax. Test-time augmentation as mmseg 1.x's
SegTTAModel: for every ratio the *original* image resized by it, unflipped and flipped, softmax probabilities
averaged.
"""
import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from resnest_fast.checkpoint import load_checkpoint
from resnest_fast.segmentation.builder import build_model
from resnest_fast.segmentation.config import resolve_config
from resnest_fast.segmentation.decode_heads import resize
from resnest_fast.segmentation.segmentor import slide_settings
from resnest_fast.utils import int_pair

__all__ = [
    "MAX_PIXELS",
    "rescale_size",
    "resize_image",
    "tta_size",
    "predict_scores",
    "segment_image",
    "load_model",
    "config_scale",
    "slide_defaults",
    "check_scale",
]

Scale = Union[None, float, Tuple[int, int]]

# The most pixels an image may be resized to for the model (8192 x 8192). mmseg's configs test at 2048x1024 (2 MP);
# at 64 MP a ResNeSt-D8's stage-4 features alone (2048 channels at 1/8 resolution) take 8 GiB in fp32 and 19 class
# logits 4.75 GiB, so a scale beyond it (100000 x 100000 asked for 1e10) cannot finish here: it is refused in one
# line rather than ending with the process killed for memory.
MAX_PIXELS = 8192 * 8192


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _factor(value, name: str) -> float:
    """value as a positive finite Python float; TypeError/ValueError naming `name` otherwise."""
    if not _is_number(value):
        raise TypeError(f"{name} must be a positive number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def check_scale(scale, name: str = "scale") -> Scale:
    """`scale` as segment_image takes it: None, a positive factor (a Python float), or a pair of positive ints
    (tuple or list) bounding the long and short edges (a tuple). A TypeError/ValueError naming `name` otherwise."""
    if scale is None:
        return None
    if _is_number(scale):
        return _factor(scale, f"{name} (a factor)")
    if not isinstance(scale, (tuple, list)) or len(scale) != 2:
        raise TypeError(f"{name} must be None, a positive factor or a pair of positive ints (long, short edge), "
                        f"got {scale!r}")
    pair = int_pair(scale, name, 1)
    if pair[0] * pair[1] > MAX_PIXELS:  # the resized image fits in long x short
        raise ValueError(f"{name} {pair} resizes images to up to {pair[0] * pair[1]} pixels: at most {MAX_PIXELS} "
                         "(8192 x 8192) are allowed, where a ResNeSt's last-stage features alone take 8 GiB")
    return pair


def rescale_size(old_size, scale):
    """mmcv's ``rescale_size``: the (w, h) an image of ``old_size`` = (w, h) gets when rescaled with its ratio kept.

    scale: a number (the factor) or a pair whose larger value bounds the long edge and smaller value the short edge.
    Returns ((new_w, new_h), factor).
    """
    w, h = old_size
    scale = check_scale(scale)
    if isinstance(scale, float):
        factor = scale
    else:
        long_edge, short_edge = max(scale), min(scale)
        factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return (int(w * factor + 0.5), int(h * factor + 0.5)), factor


def resize_image(img, size):
    """Bilinear resize of a (H, W, C) uint8 image to size = (w, h): cv2's INTER_LINEAR geometry, no antialiasing."""
    w, h = size
    if w < 1 or h < 1:
        raise ValueError(f"cannot resize an image of {img.shape[1]}x{img.shape[0]} to {w}x{h}")
    if w * h > MAX_PIXELS:
        raise ValueError(f"cannot resize an image of {img.shape[1]}x{img.shape[0]} to {w}x{h}: {w * h} pixels, over "
                         f"the {MAX_PIXELS} (8192 x 8192) allowed, where a ResNeSt's last-stage features alone take "
                         "8 GiB")
    if (h, w) == img.shape[:2]:
        return img.copy()
    # torch's uint8 kernel (channels_last) is ~10x faster than going through float and rounds to nearest.
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).unsqueeze(0)
    t = t.contiguous(memory_format=torch.channels_last)
    out = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=False)
    return np.ascontiguousarray(out[0].permute(1, 2, 0).numpy())


def tta_size(width: int, height: int, ratio: float) -> Tuple[int, int]:
    """(w, h) of an image of width x height after mmcv's Resize(scale_factor=ratio, keep_ratio=True): the target
    int(edge * ratio + 0.5), then mmcv's imrescale to that target (which may round an edge differently)."""
    ratio = _factor(ratio, "a TTA ratio")
    target = (int(width * ratio + 0.5), int(height * ratio + 0.5))
    return rescale_size((width, height), target)[0]


def _logits_at(model, img: np.ndarray, size, flip: bool, out_hw, mode, crop_size, stride) -> torch.Tensor:
    """(1, C, *out_hw) logits of img resized to size (w, h) (None: as it is), flipped horizontally if asked,
    the prediction flipped back and resized to out_hw."""
    resized = img if size is None or tuple(size) == (img.shape[1], img.shape[0]) else resize_image(img, size)
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).unsqueeze(0).contiguous().to(device)
    if flip:
        x = x.flip(-1)
    logits = model.inference(x, mode=mode, crop_size=crop_size, stride=stride)
    if flip:
        logits = logits.flip(-1)
    if tuple(logits.shape[2:]) != tuple(out_hw):
        logits = resize(logits, out_hw, model.align_corners)
    return logits


@torch.no_grad()
def predict_scores(
    model,
    img: np.ndarray,
    *,
    scale=None,
    mode: Optional[str] = None,
    crop_size: Optional[Sequence[int]] = None,
    stride: Optional[Sequence[int]] = None,
    tta_ratios: Optional[Sequence[float]] = None,
    flip: bool = False,
) -> torch.Tensor:
    """Class scores (num_classes, H, W) of one (H, W, 3) uint8 RGB image at its original size; argmax over dim 0
    is the prediction.

    Without TTA (tta_ratios None and flip False): the logits of the image resized to `scale` (a pair bounding the
    long and short edges, a factor, or None for the original size). With TTA: the mean over ratios x flips of
    softmax(logits), the ratios applying to the original image (mmseg 1.x; `scale` is then unused); flip alone
    uses the ratio 1. mode, crop_size, stride: the model's inference settings (None: its test_cfg)."""
    if not (isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8):
        what = f"{img.dtype} array of shape {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise ValueError(f"img must be an (H, W, 3) uint8 RGB array, got a {what}")
    scale = check_scale(scale)
    if tta_ratios is not None:
        if isinstance(tta_ratios, (str, bytes)) or not hasattr(tta_ratios, "__iter__"):
            raise TypeError(f"tta_ratios must be a sequence of positive numbers, got {tta_ratios!r}")
        tta_ratios = [_factor(r, "each of tta_ratios") for r in tta_ratios]
    h, w = img.shape[:2]
    if tta_ratios is None and not flip:
        size = None if scale is None else rescale_size((w, h), scale)[0]
        return _logits_at(model, img, size, False, (h, w), mode, crop_size, stride)[0]
    ratios = tuple(tta_ratios) if tta_ratios else (1.0,)
    flips = (False, True) if flip else (False,)
    total = None
    for ratio in ratios:
        size = tta_size(w, h, ratio)
        for flipped in flips:
            probs = _logits_at(model, img, size, flipped, (h, w), mode, crop_size, stride).softmax(dim=1)
            total = probs if total is None else total + probs
    return (total / (len(ratios) * len(flips)))[0]


def segment_image(
    model,
    img: np.ndarray,
    *,
    mode: Optional[str] = None,
    scale: Scale = None,
    crop_size: Optional[Sequence[int]] = None,
    stride: Optional[Sequence[int]] = None,
) -> np.ndarray:
    """Label map of one image, mmseg's test pipeline and post-processing.

    model: an EncoderDecoder (on any device; the image follows it), run in eval mode whatever its mode
        (EncoderDecoder.inference).
    img: (H, W, 3) uint8 RGB.
    mode: 'whole' or 'slide' (None: the model's test_cfg); crop_size, stride: (h, w) of the sliding windows.
    scale: None keeps the original size; a pair bounds the long and the short edge of the resized image (ratio
        kept, so the order of the pair does not matter: (2048, 1024) == (1024, 2048)); a number is a factor.
    Returns (H, W) class indices at the original size: uint8 when num_classes <= 256, else int64.
    """
    labels = predict_scores(model, img, scale=scale, mode=mode, crop_size=crop_size, stride=stride).argmax(0)
    return labels.to(torch.uint8 if model.num_classes <= 256 else torch.int64).cpu().numpy()


def load_model(config, checkpoint, backend: Optional[str] = None, device: Optional[str] = None):
    """(model in eval mode on `device`, config dict, checkpoint meta). Raises CheckpointError, ValueError,
    TypeError, KeyError or OSError on a bad config or checkpoint; device None: CUDA when available, else the CPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA GPU (use --device cpu)")
    if checkpoint is None:
        raise ValueError("a checkpoint is required (a segmenter with random weights predicts nothing useful)")
    cfg = resolve_config(config)
    model = build_model(cfg, backend=backend)  # names a config that is not a dict or has no `model`
    meta = load_checkpoint(model, checkpoint, strict=True).meta
    return model.eval().to(device), cfg, meta


def config_scale(cfg: dict) -> Scale:
    scale = (cfg.get("data") or {}).get("scale")
    return None if scale is None else tuple(int(s) for s in scale)


def slide_defaults(model, cfg: dict, crop_size, stride):
    """The windows (crop_size, stride) a slide inference of `model` runs with for these arguments (None: not
    given), by the model's own rule (`segmentor.slide_settings`), so the commands and model.predict agree: test_cfg's
    windows; a crop_size without a stride gets 2/3 of it. Where the model has no window of its own (no test_cfg
    crop_size, no data_preprocessor size), the config's training crop (`crop_size`, data.crop_size) stands in."""
    training_crop = model.crop_size or cfg.get("crop_size") or (cfg.get("data") or {}).get("crop_size")
    if crop_size is None and model.test_cfg.get("crop_size") is None and training_crop is None:
        raise ValueError("slide mode needs --crop-size: the config has neither test_cfg.crop_size nor crop_size")
    return slide_settings(model.test_cfg, crop_size, stride, training_crop)
