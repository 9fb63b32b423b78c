"""A generated segmentation dataset with exact masks, for smoke tests and quick training runs without real data.

Each image is a smooth low-saturation background (class 0) with noise, on which 2..max_shapes shapes are painted
in order (later ones occlude earlier ones): rectangles, ellipses and triangles whose *class* decides their look -
a base colour (hues spread over the wheel) and a texture (plain, stripes, checkerboard or rings, with a
class-specific period and angle). The shape kind is random, so a model has to read colour and texture, not
outline. The label is the exact mask of what was painted, at pixel centres. Appearance depends only on the class
id and num_classes (train and val sets made with different seeds look alike); layout and jitter depend on
(seed, index) alone.
"""

import colorsys

import numpy as np
from torch.utils.data import Dataset

from .datasets import resolve_index, to_tensors
from .transforms import IMG, SEG

_TEXTURES = ("plain", "stripes", "checker", "rings")


class SyntheticDataset(Dataset):
    """num_samples generated images of size (H, W) with num_classes classes (class 0 is the background).

    Items have the same keys and types as the real datasets; ``img_path`` and ``seg_path`` are a description
    "synthetic:seed=S:index=I". pipeline (optional) is called as ``pipeline(results, rng)`` with a generator of
    (seed, pass, index), like the real datasets (``dataset[(index, pass)]`` or ``set_epoch``).
    """

    def __init__(self, num_samples, size=(128, 128), num_classes=6, seed=0, pipeline=None, max_shapes=6, noise=8.0):
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + at least one shape class), got {num_classes}")
        if num_classes > 255:
            raise ValueError(f"num_classes must be <= 255 (255 is the ignore index), got {num_classes}")
        h, w = size
        if h < 8 or w < 8:
            raise ValueError(f"size must be at least 8x8, got {size}")
        self.num_samples = int(num_samples)
        self.size = (int(h), int(w))
        self.num_classes = int(num_classes)
        self.seed = seed
        self.pipeline = pipeline
        self.max_shapes = max(2, int(max_shapes))
        self.noise = float(noise)
        self.epoch = 0
        self.CLASSES = ("background",) + tuple(f"shape_{k}" for k in range(1, self.num_classes))
        self._styles = [self._class_style(k) for k in range(1, self.num_classes)]
        self.PALETTE = ((128, 128, 128),) + tuple(s["colour"] for s in self._styles)

    def _class_style(self, k):
        n = self.num_classes - 1
        hue = (k - 1) / n
        # Alternate brightness so that neighbouring hues also differ in value when there are many classes.
        value = 0.9 if k % 2 else 0.6
        colour = tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, 0.85, value))
        texture = _TEXTURES[(k - 1) % len(_TEXTURES)]
        return {
            "colour": colour,
            "texture": texture,
            "period": 4.0 + 2.0 * ((k - 1) // len(_TEXTURES) % 4),
            "angle": np.pi * ((k * 0.37) % 1.0),
        }

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return self.num_samples

    def _texture(self, style, yy, xx, cy, cx):
        period, angle = style["period"], style["angle"]
        if style["texture"] == "stripes":
            u = xx * np.cos(angle) + yy * np.sin(angle)
            return np.where((u // (period / 2)) % 2 == 0, 1.0, -1.0)
        if style["texture"] == "checker":
            return np.where(((xx // period) + (yy // period)) % 2 == 0, 1.0, -1.0)
        if style["texture"] == "rings":
            r = np.hypot(yy - cy, xx - cx)
            return np.where((r // (period / 2)) % 2 == 0, 1.0, -1.0)
        return np.zeros_like(xx)

    def _shape_mask(self, kind, rng, yy, xx):
        h, w = self.size
        extent = min(h, w)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        a = rng.uniform(0.1, 0.3) * extent
        b = rng.uniform(0.1, 0.3) * extent
        if kind == "rectangle":
            mask = (np.abs(yy - cy) <= a) & (np.abs(xx - cx) <= b)
        elif kind == "ellipse":
            t = rng.uniform(0, np.pi)
            u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
            v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
            mask = (u / b) ** 2 + (v / a) ** 2 <= 1.0
        else:
            angles = rng.uniform(0, 2 * np.pi) + np.array([0.0, 2.1, 4.2]) + rng.uniform(-0.4, 0.4, 3)
            radius = max(a, b) * 1.3
            py, px = cy + radius * np.sin(angles), cx + radius * np.cos(angles)
            # Inside a triangle: the three edge functions share a sign (whatever the vertex order).
            edges = [
                (px[j] - px[i]) * (yy - py[i]) - (py[j] - py[i]) * (xx - px[i]) for i, j in ((0, 1), (1, 2), (2, 0))
            ]
            mask = ((edges[0] >= 0) & (edges[1] >= 0) & (edges[2] >= 0)) | (
                (edges[0] <= 0) & (edges[1] <= 0) & (edges[2] <= 0)
            )
        return mask, cy, cx

    def generate(self, index):
        """(image (H, W, 3) uint8 RGB, label (H, W) uint8) of sample ``index``; a pure function of (seed, index)."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for a dataset of {self.num_samples} samples")
        rng = np.random.default_rng([self.seed, index])
        h, w = self.size
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5

        # Background: a gentle gradient between two greyish colours.
        c0 = rng.uniform(60, 190, 3) + rng.uniform(-20, 20)
        c1 = rng.uniform(60, 190, 3)
        t = rng.uniform(0, 2 * np.pi)
        ramp = ((xx * np.cos(t) + yy * np.sin(t)) / max(h, w) + 1.0) / 2.0
        img = c0 * (1 - ramp[..., None]) + c1 * ramp[..., None]
        img = 0.5 * img + 0.5 * img.mean(axis=-1, keepdims=True)  # desaturate: colour belongs to the shapes
        label = np.zeros((h, w), dtype=np.uint8)

        for _ in range(int(rng.integers(2, self.max_shapes + 1))):
            cls = int(rng.integers(1, self.num_classes))
            style = self._styles[cls - 1]
            kind = ("rectangle", "ellipse", "triangle")[int(rng.integers(3))]
            mask, cy, cx = self._shape_mask(kind, rng, yy, xx)
            colour = np.array(style["colour"], dtype=np.float64) + rng.uniform(-15, 15, 3)
            shade = 1.0 + 0.25 * self._texture(style, yy, xx, cy, cx)
            painted = np.clip(colour[None, None, :] * shade[..., None], 0, 255)
            img[mask] = painted[mask]
            label[mask] = cls

        img = img + rng.normal(0.0, self.noise, img.shape)
        return np.clip(np.rint(img), 0, 255).astype(np.uint8), label

    def __getitem__(self, index):
        index, draw = resolve_index(index, len(self), self.epoch)
        img, label = self.generate(index)
        name = f"synthetic:seed={self.seed}:index={index}"
        results = {IMG: img, SEG: label, "img_path": name, "seg_path": name, "ori_shape": img.shape[:2]}
        if self.pipeline is not None:
            results = self.pipeline(results, np.random.default_rng([self.seed, draw, index, 1]))
        return to_tensors(results)

    def __repr__(self):
        return (
            f"{type(self).__name__}(num_samples={self.num_samples}, size={self.size}, num_classes={self.num_classes}, "
            f"seed={self.seed}, pipeline={self.pipeline!r})"
        )
