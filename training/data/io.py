"""Decoding of images and label maps with pillow + numpy, with errors that name the file.

Semantics follow mmseg 1.x's loaders so that what a model sees is what it would see under mmseg:
- images: ``LoadImageFromFile`` decodes in colour, honouring the EXIF orientation (cv2 and mmcv's pillow path both
  do), any mode converted to 3 channels. We return RGB where mmseg returns BGR: its data preprocessor swaps
  the channels back to RGB (``bgr_to_rgb=True`` in the ResNeSt configs), so the model input is the same.
- labels: ``LoadAnnotations`` decodes 'unchanged' (palette indices for 'P' PNGs, no EXIF rotation) and casts to
  uint8; ``reduce_zero_label`` maps 0 -> 255 and every other value v -> v - 1 (255 stays 255).
"""

import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class CorruptFileError(OSError):
    """An image or label file exists but cannot be decoded (or has the wrong number of channels)."""


def _open_fully(path, kind):
    """Open and decode the whole file now: pillow is lazy, and a truncated file fails only at load()."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{kind} file not found: {path}")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise CorruptFileError(f"cannot decode {kind} file {path}: {err}") from err
    return img


def load_image(path):
    """Decode an image file to a (H, W, 3) uint8 RGB array (EXIF orientation applied, like mmseg's loader)."""
    img = _open_fully(path, "image")
    try:
        img = ImageOps.exif_transpose(img)
        if img.mode == "LA":
            # pillow's LA -> RGB drops alpha onto black; mmcv composites on a fixed grey instead.
            rgba = img.convert("RGBA")
            img = Image.new("RGB", rgba.size, (124, 117, 104))
            img.paste(rgba, mask=rgba.split()[3])
        elif img.mode != "RGB":
            img = img.convert("RGB")
        array = np.array(img, dtype=np.uint8)  # a writable copy: transforms and torch.from_numpy may write
    except (OSError, ValueError) as err:
        raise CorruptFileError(f"cannot decode image file {path}: {err}") from err
    return array


def load_label(path, reduce_zero_label=False):
    """Decode a label map to a (H, W) uint8 array, values as stored (palette indices for 'P' PNGs).

    reduce_zero_label: mmseg's rule for datasets whose 0 means "other" (ADE20k): 0 -> 255, v -> v - 1, 255 -> 255.
    """
    img = _open_fully(path, "label")
    array = np.asarray(img)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != 2:
        raise CorruptFileError(
            f"label file {path} has mode {img.mode} with shape {array.shape}: a label map must be a single-channel "
            "image (mode L or P) of class ids"
        )
    # mmseg casts whatever was decoded (e.g. 16-bit PNGs) to uint8 the same way.
    label = array.astype(np.uint8)
    if reduce_zero_label:
        label = reduce_zero(label)
    return label


def reduce_zero(label):
    """mmseg's reduce_zero_label on a uint8 map: 0 -> 255 (ignored), v -> v - 1 for 1..254, 255 stays 255."""
    label = label.copy()
    label[label == 0] = 255
    label = label - 1  # uint8: 255 -> 254, which is put back to 255 below (never a real class after reduction)
    label[label == 254] = 255
    return label
