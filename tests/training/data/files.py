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


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png16_gray_alpha(path, gray_alpha):
    """A 16-bit grey + alpha PNG (colour type 4) of the (H, W, 2) uint16 array, written by hand: pillow has no mode
    to save one from."""
    h, w, _ = gray_alpha.shape
    raw = b"".join(b"\x00" + gray_alpha[y].astype(">u2").tobytes() for y in range(h))  # filter 0 per row
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw))
                + _png_chunk(b"IEND", b""))


def write_tiff_alpha(path, array, associated):
    """An uncompressed 8-bit TIFF of the (H, W, 2 or 4) uint8 array, its last sample an alpha: unassociated
    (ExtraSamples 2, pillow's choice) or associated, i.e. premultiplied (ExtraSamples 1, which pillow cannot write:
    its ExtraSamples entry is patched)."""
    mode = "LA" if array.shape[2] == 2 else "RGBA"
    Image.fromarray(np.ascontiguousarray(array), mode).save(path)
    if associated:
        entry = struct.pack("<HHIHH", 338, 3, 1, 2, 0)  # tag ExtraSamples, SHORT, count 1, value 2
        data = open(path, "rb").read()
        assert data.count(entry) == 1, "pillow's TIFF layout changed: ExtraSamples not found once"
        with open(path, "wb") as f:
            f.write(data.replace(entry, struct.pack("<HHIHH", 338, 3, 1, 1, 0)))
