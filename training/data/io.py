"""Decoding of images and label maps with pillow + numpy, with errors that name the file.

Semantics follow mmseg 1.x's loaders so that what a model sees is what it would see under mmseg:
- images: ``LoadImageFromFile`` decodes in colour, honouring the EXIF orientation (cv2 and mmcv's pillow path both
  do), any mode converted to 3 channels. We return RGB where mmseg returns BGR: its data preprocessor swaps
  the channels back to RGB (``bgr_to_rgb=True`` in the ResNeSt configs), so the model input is the same.
- high bit depth: mmseg decodes with OpenCV, whose colour flag turns 16-bit samples into 8-bit ones by
  ``>> 8`` (mmcv.imread(backend='cv2') gives 33375 -> 130); pillow's own conversion would clip them to 255, so 16-bit
  grayscale is shifted here as OpenCV does. 32-bit integer and float images (pillow modes I and F) OpenCV cannot
  read in colour at all, and their range is not defined: they are refused with an error naming the file.
- alpha: OpenCV's colour flag drops it and keeps the colour samples as stored (PNG and WebP with alpha, grey + alpha
  in any format, palette PNGs with transparency), except in TIFF, where its libtiff reader multiplies the colour by
  an unassociated alpha ((c * a + 127) // 255) and returns associated (premultiplied) samples as stored: the same is
  done here (mmcv's pillow path instead composites grey + alpha on grey (124, 117, 104), not what mmseg sees).
- the one difference left: 16-bit colour TIFFs (3 or 4 samples), which libtiff rounds to 8 bits (v / 257) where
  pillow keeps the high byte (v >> 8): up to 1 level apart (before any multiplication by alpha); 16-bit grey TIFFs
  and 16-bit PNGs are exact. Reading them as OpenCV does would need OpenCV (or libtiff) itself.
- labels: ``LoadAnnotations`` decodes 'unchanged' (palette indices for 'P' PNGs, no EXIF rotation) and casts to
  uint8; ``reduce_zero_label`` maps 0 -> 255 and every other value v -> v - 1 (255 stays 255). mmseg's cast wraps
  the ids of 16- and 32-bit label files modulo 256 (300 becomes class 43 of ADE20k): here the ids are checked
  before any narrowing and a file holding one that is neither a class nor 255 is refused, naming it.
"""

import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from resnest_fast.utils import not_a_file


class CorruptFileError(OSError):
    """An image or label file exists but cannot be decoded (or has the wrong number of channels)."""


class DataError(ValueError):
    """A sample's files do not fit together or the dataset (size mismatch, class id out of range); names them."""


def _open_fully(path, kind):
    """Open and decode the whole file now: pillow is lazy, and a truncated file fails only at load()."""
    if not os.path.isfile(path):
        what = not_a_file(path)
        if what:
            raise CorruptFileError(f"cannot use {kind} file {path}: it is {what}, not a regular file")
        raise FileNotFoundError(f"{kind} file not found: {path}")
    try:
        img = Image.open(path)
        img.load()
    # DecompressionBombError (not an OSError): pillow refuses a pixel count that could exhaust memory, e.g. a
    # tiny file whose header claims 30000 x 30000
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CorruptFileError(f"cannot decode {kind} file {path}: {err}") from err
    return img


def load_image(path):
    """Decode an image file to a (H, W, 3) uint8 RGB array (EXIF orientation applied, like mmseg's loader)."""
    img = _open_fully(path, "image")
    if img.mode in ("I", "F"):
        kind = "32-bit float" if img.mode == "F" else "32-bit integer"
        raise CorruptFileError(f"cannot use image file {path}: its pixels are {kind} (pillow mode {img.mode}), "
                               "which have no defined 0-255 range; convert it to an 8- or 16-bit image")
    alpha = _tiff_alpha(img) if img.mode == "RGBA" else 0  # read before exif_transpose drops the tags
    try:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("LA", "La"):
            # OpenCV's colour flag keeps the grey samples as stored and drops the alpha (libpng strips it, libtiff's
            # grey reader ignores it); pillow's LA -> RGB would keep them too, but mmcv's pillow path composites
            # them on grey (124, 117, 104), which is not what mmseg's cv2 loader sees
            img = img.getchannel(0)
        if img.mode.startswith("I;16"):
            gray = (np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8)
            return np.repeat(gray[:, :, None], 3, axis=2)  # a fresh array: writable
        if alpha:
            return premultiply_alpha(np.asarray(img), unpremultiplied=alpha == 1)
        if img.mode == "P":
            # the palette's transparency plays no part in RGB (nor in OpenCV's colour flag); dropped, pillow would
            # warn about it at every such image
            img.info.pop("transparency", None)
        if img.mode != "RGB":
            img = img.convert("RGB")
        array = np.array(img, dtype=np.uint8)  # a writable copy: transforms and torch.from_numpy may write
    except (OSError, ValueError) as err:
        raise CorruptFileError(f"cannot decode image file {path}: {err}") from err
    return array


def _tiff_alpha(img) -> int:
    """A TIFF's ExtraSamples value for its first extra sample (1: associated alpha, 2: unassociated alpha), or 0
    for any other image (no alpha, an unspecified extra sample, another format)."""
    extra = getattr(img, "tag_v2", {}).get(338) if img.format == "TIFF" else None
    if isinstance(extra, (tuple, list)):
        extra = extra[0] if extra else None
    return extra if extra in (1, 2) else 0


def premultiply_alpha(rgba: np.ndarray, unpremultiplied: bool = False) -> np.ndarray:
    """(H, W, 4) uint8 RGBA -> (H, W, 3) uint8 RGB, the colour samples that libtiff's RGBA reader (OpenCV's for
    8-bit TIFFs) gives for a TIFF with alpha: multiplied by alpha, (c * a + 127) // 255 (libtiff's UaToAa table),
    for unassociated alpha; as stored for associated alpha, which pillow has divided by alpha when it decoded
    them (floor(255 c / a)): `unpremultiplied=True` undoes that, ceil(u * a / 255) being the one stored c <= a that
    gives u. A new, writable array."""
    alpha = rgba[..., 3:4].astype(np.uint16)
    rounding = 254 if unpremultiplied else 127
    return ((rgba[..., :3].astype(np.uint16) * alpha + rounding) // 255).astype(np.uint8)


def load_label(path, reduce_zero_label=False, num_classes=None):
    """Decode a label map to a (H, W) uint8 array, values as stored (palette indices for 'P' PNGs).

    reduce_zero_label: mmseg's rule for datasets whose 0 means "other" (ADE20k): 0 -> 255, v -> v - 1, 255 -> 255.
    num_classes: DataError (naming the file) when an id, after reduce_zero_label, is neither a class
    (0..num_classes-1) nor 255. Whatever num_classes, an id that a uint8 cannot hold (a 16- or 32-bit file) is
    refused rather than wrapped.
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
    if array.dtype != np.uint8:
        array = array.astype(np.int64)
    label = reduce_zero(array) if reduce_zero_label else array
    check_class_ids(label, 256 if num_classes is None else num_classes, path)
    return label.astype(np.uint8, copy=False)


def check_class_ids(label, num_classes, path):
    """DataError when the (H, W) integer label map holds an id that is neither a class (0..num_classes-1) nor 255
    (ignored): the loss would fail later with only the id, and the evaluation would miscount it. Ids above 255 are
    refused whatever num_classes: label maps are uint8 from here on, and narrowing would wrap them."""
    num_classes = min(num_classes, 256)
    if label.dtype == np.uint8:
        if num_classes >= 255:
            return
        bad = np.flatnonzero(np.bincount(label.ravel(), minlength=256)[num_classes:255]) + num_classes
    else:
        values = np.unique(label)
        bad = values[((values >= num_classes) | (values < 0)) & (values != 255)]
    if len(bad):
        ids = ", ".join(str(int(v)) for v in bad[:5])
        if num_classes == 256:
            raise DataError(f"label file {path} holds class id(s) {ids}: a label map holds ids 0..255 "
                            "(255 = ignore)")
        raise DataError(f"label file {path} holds class id(s) {ids}: the dataset has {num_classes} classes "
                        f"(0..{num_classes - 1}, 255 = ignore)")


def reduce_zero(label):
    """mmseg's reduce_zero_label: 0 -> 255 (ignored), v -> v - 1 for every other v but 255, which stays 255. The
    dtype is kept (a uint8 map stays uint8)."""
    reduced = label.astype(np.int64) - 1
    reduced[(label == 0) | (label == 255)] = 255
    return reduced.astype(label.dtype)
