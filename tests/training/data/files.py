"""Writing small images and labels for the data tests."""
import os

import numpy as np
from PIL import Image


def write_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path)


def write_jpg(path, array, quality=95):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path, quality=quality)


def smooth_image(rng, h, w):
    """A smooth RGB image (JPEG keeps it within a few levels)."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.uniform(40, 200, 3)
    img = base + 30 * np.stack([np.sin(xx / 5.0), np.cos(yy / 4.0), np.sin((xx + yy) / 7.0)], -1)
    return np.clip(img, 0, 255).astype(np.uint8)
