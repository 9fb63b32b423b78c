"""Writing small images and labels for the data tests."""
import os
import struct
import zlib

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


def write_png_header_only(path, width, height):
    """A PNG of a few bytes whose header claims width x height 8-bit RGB pixels (a decompression bomb when the
    claim is large): signature, IHDR, an empty IDAT, IEND."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
