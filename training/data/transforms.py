"""Training and test pipelines with mmseg 1.x semantics, on numpy arrays, without cv2.

A pipeline works on a ``results`` dict: ``img`` (H, W, 3) uint8 RGB, ``gt_semantic_seg`` (H, W) uint8 (optional)
and metadata. Every transform is ``t(results, rng)``; the random ones draw only from ``rng`` (a
``numpy.random.Generator``), so a sample is reproducible from the generator alone. The datasets derive one
generator per (seed, epoch, index), which keeps runs reproducible whatever the number of DataLoader workers.

Where each rule comes from (mmseg 1.2.2 / mmcv 2.1):
- ``Resize`` / ``RandomResize``: mmcv's ``rescale_size`` (keep the ratio so that the image fits the (long, short)
  edges of ``scale``; new size ``int(x * factor + 0.5)``) and ``RandomResize``'s ratio sampling
  (``target = int(scale * ratio)`` with one ratio for both edges). Images: bilinear with cv2's sampling geometry
  (half-pixel centres, no antialiasing); cv2's uint8 fixed-point rounding is not reproduced, so pixel values may
  differ from cv2 by 1. Labels: cv2's INTER_NEAREST index rule exactly (``floor(x * in / out)``).
- ``RandomCrop``: mmseg's rule, including its ``cat_max_ratio`` loop (up to 10 re-draws while one class covers
  ``cat_max_ratio`` or more of the non-ignored pixels of the crop, or fewer than two classes are present; the
  11th draw is then kept unchecked). A crop is never padded: images smaller than the crop stay smaller, and the
  batch is padded later (see ``collate``), as mmseg's data preprocessor does.
- ``RandomFlip``: flips image and label together with probability ``prob``.
- ``PhotoMetricDistortion``: mmseg's order and draws (brightness, contrast first or last, saturation, hue, each
  with probability 1/2; ``alpha * x + beta`` in float32, clipped and truncated to uint8). mmseg converts with
  cv2's 8-bit HSV (H in [0, 180)); ``rgb_to_hsv`` / ``hsv_to_rgb`` below reproduce that arithmetic on RGB.
- ``Pad``: bottom/right padding, image with ``pad_val``, label with ``seg_pad_val``.
"""

import numpy as np

from resnest_fast.segmentation.inference import rescale_size, resize_image
from resnest_fast.utils import int_pair

IMG = "img"
SEG = "gt_semantic_seg"


def _require_rng(rng, name):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"{name} is random and needs rng=numpy.random.Generator (e.g. numpy.random.default_rng(seed)) so that "
            f"runs are reproducible; got {type(rng).__name__}"
        )


# ----------------------------------------------------------------------------------------------------------- resize


def _nearest_indices(n_in, n_out):
    # cv2's resizeNN: x_src = floor(x_dst * (1 / (n_out / n_in))), computed in double exactly like this.
    inv = 1.0 / (n_out / n_in)
    return np.minimum(np.floor(np.arange(n_out) * inv).astype(np.int64), n_in - 1)


def resize_label(label, size):
    """Nearest-neighbour resize of a (H, W) label map to size = (w, h) with cv2's INTER_NEAREST index rule."""
    w, h = size
    if w < 1 or h < 1:
        raise ValueError(f"cannot resize a label map of {label.shape[1]}x{label.shape[0]} to {w}x{h}")
    rows = _nearest_indices(label.shape[0], h)
    cols = _nearest_indices(label.shape[1], w)
    return np.ascontiguousarray(label[rows[:, None], cols[None, :]])


class Resize:
    """Resize the image (bilinear) and the label (nearest), mmcv's ``Resize`` without ``scale_factor``.

    scale: with ``keep_ratio=True``, a pair bounding the long and the short edge (order does not matter, mmseg
    writes (2048, 1024)); with ``keep_ratio=False``, the exact output size (w, h).
    resize_label: False leaves the label at its original size; mmseg's test pipelines load the annotation after
    ``Resize``, so predictions are scored at the original resolution.
    """

    def __init__(self, scale, keep_ratio=True, resize_label=True):
        self.scale = int_pair(scale, "scale", 1)
        self.keep_ratio = keep_ratio
        self.resize_label = resize_label

    def target_size(self, h, w):
        """The (w, h) an image of height h and width w is resized to."""
        if self.keep_ratio:
            return rescale_size((w, h), self.scale)[0]
        return self.scale

    def __call__(self, results, rng=None):
        img = results[IMG]
        h, w = img.shape[:2]
        new_w, new_h = self.target_size(h, w)
        results[IMG] = resize_image(img, (new_w, new_h))
        if self.resize_label and results.get(SEG) is not None:
            results[SEG] = resize_label(results[SEG], (new_w, new_h))
        results["img_shape"] = (new_h, new_w)
        results["scale_factor"] = (new_w / w, new_h / h)
        return results

    def __repr__(self):
        return (
            f"{type(self).__name__}(scale={self.scale}, keep_ratio={self.keep_ratio}, "
            f"resize_label={self.resize_label})"
        )


class RandomResize:
    """mmcv's ``RandomResize`` with a single scale and a ratio range: one ratio r ~ U[lo, hi) scales both edges of
    ``scale`` (``int(edge * r)``), then ``Resize`` to that target (keeping the image's ratio when keep_ratio)."""

    def __init__(self, scale=(2048, 1024), ratio_range=(0.5, 2.0), keep_ratio=True):
        self.scale = int_pair(scale, "scale", 1)
        lo, hi = ratio_range
        if not 0 < lo <= hi:
            raise ValueError(f"ratio_range must satisfy 0 < min <= max, got {ratio_range!r}")
        self.ratio_range = (float(lo), float(hi))
        self.keep_ratio = keep_ratio

    def sample_scale(self, rng):
        _require_rng(rng, type(self).__name__)
        lo, hi = self.ratio_range
        ratio = rng.random() * (hi - lo) + lo
        return int(self.scale[0] * ratio), int(self.scale[1] * ratio)

    def __call__(self, results, rng=None):
        target = self.sample_scale(rng)
        results = Resize(target, keep_ratio=self.keep_ratio)(results)
        results["scale"] = target
        return results

    def __repr__(self):
        return f"{type(self).__name__}(scale={self.scale}, ratio_range={self.ratio_range}, keep_ratio={self.keep_ratio})"


# ------------------------------------------------------------------------------------------------------ crop, flip


class RandomCrop:
    """mmseg's ``RandomCrop``: crop_size is (h, w); a crop larger than the image is cut to the image.

    cat_max_ratio < 1 re-draws the crop (up to 10 times) while a single class covers at least that fraction of
    the crop's non-ignored pixels or fewer than two classes are present. mmseg's class default is 1.0 (no check);
    its Cityscapes and ADE20k configs, and this default, use 0.75.
    """

    def __init__(self, crop_size, cat_max_ratio=0.75, ignore_index=255):
        self.crop_size = int_pair(crop_size, "crop_size", 1)
        self.cat_max_ratio = float(cat_max_ratio)
        self.ignore_index = ignore_index

    def _draw(self, h, w, rng):
        ch, cw = self.crop_size
        top = int(rng.integers(0, max(h - ch, 0) + 1))
        left = int(rng.integers(0, max(w - cw, 0) + 1))
        return top, top + ch, left, left + cw

    def _acceptable(self, label_crop):
        counts = np.bincount(label_crop.ravel(), minlength=256)
        if 0 <= self.ignore_index < counts.size:
            counts[self.ignore_index] = 0
        counts = counts[counts > 0]
        return counts.size > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def crop_box(self, results, rng):
        """(top, bottom, left, right) of the crop, drawn with mmseg's rule."""
        _require_rng(rng, type(self).__name__)
        h, w = results[IMG].shape[:2]
        box = self._draw(h, w, rng)
        label = results.get(SEG)
        if self.cat_max_ratio < 1.0 and label is not None:
            for _ in range(10):
                top, bottom, left, right = box
                if self._acceptable(label[top:bottom, left:right]):
                    break
                box = self._draw(h, w, rng)
        return box

    def __call__(self, results, rng=None):
        top, bottom, left, right = self.crop_box(results, rng)
        results[IMG] = np.ascontiguousarray(results[IMG][top:bottom, left:right])
        if results.get(SEG) is not None:
            results[SEG] = np.ascontiguousarray(results[SEG][top:bottom, left:right])
        results["img_shape"] = results[IMG].shape[:2]
        return results

    def __repr__(self):
        return (
            f"{type(self).__name__}(crop_size={self.crop_size}, cat_max_ratio={self.cat_max_ratio}, "
            f"ignore_index={self.ignore_index})"
        )


class RandomFlip:
    """Flip image and label together with probability ``prob`` ('horizontal' or 'vertical')."""

    def __init__(self, prob=0.5, direction="horizontal"):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        if direction not in ("horizontal", "vertical"):
            raise ValueError(f"direction must be 'horizontal' or 'vertical', got {direction!r}")
        self.prob = float(prob)
        self.direction = direction

    def __call__(self, results, rng=None):
        _require_rng(rng, type(self).__name__)
        flip = bool(rng.random() < self.prob)
        if flip:
            axis = 1 if self.direction == "horizontal" else 0
            results[IMG] = np.ascontiguousarray(np.flip(results[IMG], axis=axis))
            if results.get(SEG) is not None:
                results[SEG] = np.ascontiguousarray(np.flip(results[SEG], axis=axis))
        results["flip"] = flip
        results["flip_direction"] = self.direction if flip else None
        return results

    def __repr__(self):
        return f"{type(self).__name__}(prob={self.prob}, direction={self.direction!r})"


# ------------------------------------------------------------------------------------------ photometric distortion

_HSV_SHIFT = 12
_DIVISORS = np.maximum(np.arange(256), 1)
# cv2's 8-bit tables: round((255 << 12) / v) and round((180 << 12) / (6 * diff)); entry 0 is 0. No ties occur.
_SDIV = np.where(np.arange(256) == 0, 0, np.rint((255 << _HSV_SHIFT) / _DIVISORS)).astype(np.int64)
_HDIV = np.where(np.arange(256) == 0, 0, np.rint((180 << _HSV_SHIFT) / (6.0 * _DIVISORS))).astype(np.int64)
# For each hue sector, which of (v, p, q, t) goes to (r, g, b).
_SECTOR_TO_RGB = np.array([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]])


def rgb_to_hsv(img):
    """(H, W, 3) uint8 RGB -> uint8 HSV with cv2's 8-bit convention and arithmetic (H in [0, 180), S and V in
    [0, 255]); equal to ``cv2.cvtColor(img, cv2.COLOR_RGB2HSV)`` for every colour."""
    r, g, b = (img[..., k].astype(np.int64) for k in range(3))
    v = np.maximum(np.maximum(r, g), b)
    diff = v - np.minimum(np.minimum(r, g), b)
    half = 1 << (_HSV_SHIFT - 1)
    s = (diff * _SDIV[v] + half) >> _HSV_SHIFT
    h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _HDIV[diff] + half) >> _HSV_SHIFT  # arithmetic shift: rounds half up, negatives included
    h = np.where(h < 0, h + 180, h)
    return np.stack([h, s, v], axis=-1).astype(np.uint8)


def hsv_to_rgb(hsv):
    """uint8 HSV (cv2's 8-bit convention) -> (H, W, 3) uint8 RGB with the arithmetic of cv2's vectorised 8-bit
    path: float32 maths, ``1 - s * f`` fused (one rounding, as the FMA-enabled build computes it) and the result
    truncated, not rounded. Measured equal to opencv-python 5.0 (x86-64) on all 180 x 256 x 256 triples; cv2's
    own scalar tail (the last pixels of a row that does not fill a SIMD block) rounds instead, so cv2 itself
    differs from this by at most 1 there."""
    f32 = np.float32
    h = hsv[..., 0].astype(f32) * f32(6.0 / 180.0)
    s = hsv[..., 1].astype(f32) * f32(1.0 / 255.0)
    v = hsv[..., 2].astype(f32) * f32(1.0 / 255.0)
    sector = np.trunc(h)
    frac = (h - sector).astype(f32)
    sector = sector.astype(np.int64) % 6
    s64 = s.astype(np.float64)
    p = v * (f32(1.0) - s)
    q = v * (1.0 - s64 * frac.astype(np.float64)).astype(f32)
    t = v * (1.0 - s64 * (f32(1.0) - frac).astype(np.float64)).astype(f32)
    table = np.stack([v, p, q, t], axis=-1)
    rgb = np.take_along_axis(table, _SECTOR_TO_RGB[sector], axis=-1)
    return np.clip(np.trunc(rgb * f32(255.0)), 0, 255).astype(np.uint8)


def _affine_uint8(x, alpha=1.0, beta=0.0):
    """mmseg's ``convert``: float32 ``x * alpha + beta``, clipped to [0, 255], truncated to uint8."""
    out = x.astype(np.float32) * alpha + beta
    return np.clip(out, 0, 255).astype(np.uint8)


class PhotoMetricDistortion:
    """mmseg's ``PhotoMetricDistortion`` on RGB: random brightness, then contrast (first or last), saturation and
    hue, each applied with probability 1/2; the draws are made in mmseg's order.

    ``sample(rng)`` draws the parameters (a dict; None = branch off) and ``apply(img, params)`` applies them, so
    the effect of any combination can be checked; ``__call__`` does both.
    """

    def __init__(self, brightness_delta=32, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5), hue_delta=18):
        self.brightness_delta = brightness_delta
        self.contrast_range = tuple(contrast_range)
        self.saturation_range = tuple(saturation_range)
        self.hue_delta = int(hue_delta)

    def sample(self, rng):
        _require_rng(rng, type(self).__name__)

        def coin():
            return bool(rng.integers(2))

        params = {}
        params["brightness"] = rng.uniform(-self.brightness_delta, self.brightness_delta) if coin() else None
        # mmseg: mode = randint(2); mode == 1 -> contrast before the HSV steps, mode == 0 -> after them.
        params["contrast_first"] = coin()
        contrast = None
        if params["contrast_first"] and coin():
            contrast = rng.uniform(*self.contrast_range)
        params["saturation"] = rng.uniform(*self.saturation_range) if coin() else None
        # numpy's randint(-d, d) excludes d: hue shifts are in [-d, d - 1], as in mmseg.
        params["hue"] = int(rng.integers(-self.hue_delta, self.hue_delta)) if coin() else None
        if not params["contrast_first"] and coin():
            contrast = rng.uniform(*self.contrast_range)
        params["contrast"] = contrast
        return params

    @staticmethod
    def apply(img, params):
        """img (H, W, 3) uint8 RGB -> distorted copy (uint8). params as returned by ``sample``."""
        if params.get("brightness") is not None:
            img = _affine_uint8(img, beta=params["brightness"])
        if params.get("contrast_first") and params.get("contrast") is not None:
            img = _affine_uint8(img, alpha=params["contrast"])
        if params.get("saturation") is not None:
            hsv = rgb_to_hsv(img)
            hsv[..., 1] = _affine_uint8(hsv[..., 1], alpha=params["saturation"])
            img = hsv_to_rgb(hsv)
        if params.get("hue") is not None:
            hsv = rgb_to_hsv(img)
            hsv[..., 0] = (hsv[..., 0].astype(np.int64) + params["hue"]) % 180
            img = hsv_to_rgb(hsv)
        if not params.get("contrast_first") and params.get("contrast") is not None:
            img = _affine_uint8(img, alpha=params["contrast"])
        return img

    def __call__(self, results, rng=None):
        results[IMG] = self.apply(results[IMG], self.sample(rng))
        return results

    def __repr__(self):
        return (
            f"{type(self).__name__}(brightness_delta={self.brightness_delta}, contrast_range={self.contrast_range}, "
            f"saturation_range={self.saturation_range}, hue_delta={self.hue_delta})"
        )


# ---------------------------------------------------------------------------------------------------------- padding


class Pad:
    """Pad image and label at the bottom and right to ``size`` = (h, w) (never crops), or to the next multiple of
    ``size_divisor``; the image with ``pad_val``, the label with ``seg_pad_val`` (ignored by the loss)."""

    def __init__(self, size=None, pad_val=0, seg_pad_val=255, size_divisor=None):
        if (size is None) == (size_divisor is None):
            raise ValueError("Pad needs exactly one of size=(h, w) and size_divisor")
        self.size = None if size is None else int_pair(size, "size", 1)
        self.size_divisor = size_divisor
        self.pad_val = pad_val
        self.seg_pad_val = seg_pad_val

    def target_shape(self, h, w):
        if self.size is not None:
            return max(h, self.size[0]), max(w, self.size[1])
        d = self.size_divisor
        return -(-h // d) * d, -(-w // d) * d

    def __call__(self, results, rng=None):
        img = results[IMG]
        h, w = img.shape[:2]
        th, tw = self.target_shape(h, w)
        results[IMG] = np.pad(img, ((0, th - h), (0, tw - w), (0, 0)), constant_values=self.pad_val)
        if results.get(SEG) is not None:
            seg = results[SEG]
            sh, sw = seg.shape
            # A test-time label keeps its original size, which may exceed the resized image's: never crop it.
            pad = ((0, max(th - sh, 0)), (0, max(tw - sw, 0)))
            results[SEG] = np.pad(seg, pad, constant_values=self.seg_pad_val)
        results["pad_shape"] = (th, tw)
        return results

    def __repr__(self):
        return (
            f"{type(self).__name__}(size={self.size}, size_divisor={self.size_divisor}, pad_val={self.pad_val}, "
            f"seg_pad_val={self.seg_pad_val})"
        )


# ---------------------------------------------------------------------------------------------------- composition


class Compose:
    """Apply transforms in order, all drawing from the same generator."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, results, rng=None):
        for t in self.transforms:
            results = t(results, rng)
        return results

    def __repr__(self):
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"{type(self).__name__}([{inner}\n])"


# mmseg's _base_/datasets/{cityscapes,ade20k}.py: (long, short) edge bounds of the resize and (h, w) train crop.
DATASET_SETTINGS = {
    "cityscapes": {"scale": (2048, 1024), "crop_size": (512, 1024)},
    "ade20k": {"scale": (2048, 512), "crop_size": (512, 512)},
}
_TRAIN_SPLITS = ("train", "training")
_TEST_SPLITS = ("val", "validation", "test")


def build_pipeline(dataset_name, split, crop_size=None):
    """mmseg's pipelines for 'cityscapes' and 'ade20k' (loading is done by the dataset).

    train ('train' / 'training'): RandomResize(scale, ratio_range=(0.5, 2.0)) -> RandomCrop(crop_size,
    cat_max_ratio=0.75) -> RandomFlip(0.5) -> PhotoMetricDistortion; the batch is then padded to crop_size by
    ``collate(..., size=crop_size)`` as mmseg's SegDataPreProcessor(size=crop_size) does.
    test ('val' / 'validation' / 'test'): Resize(scale, keep_ratio=True) of the image only; the label keeps the
    original resolution, where mmseg scores predictions (resize the logits to ``ori_shape``).
    crop_size: (h, w); default: mmseg's (512, 1024) for Cityscapes, (512, 512) for ADE20k.
    """
    name = dataset_name.lower()
    if name not in DATASET_SETTINGS:
        raise ValueError(f"unknown dataset {dataset_name!r}; known: {sorted(DATASET_SETTINGS)}")
    settings = DATASET_SETTINGS[name]
    if split in _TRAIN_SPLITS:
        crop = int_pair(crop_size, "crop_size", 1) if crop_size is not None else settings["crop_size"]
        return Compose(
            [
                RandomResize(settings["scale"], ratio_range=(0.5, 2.0), keep_ratio=True),
                RandomCrop(crop, cat_max_ratio=0.75, ignore_index=255),
                RandomFlip(prob=0.5),
                PhotoMetricDistortion(),
            ]
        )
    if split in _TEST_SPLITS:
        return Compose([Resize(settings["scale"], keep_ratio=True, resize_label=False)])
    raise ValueError(f"unknown split {split!r}; train: {_TRAIN_SPLITS}, test: {_TEST_SPLITS}")
