"""Batching as mmseg's SegDataPreProcessor does it: pad every sample at the bottom/right to a common size.

mmseg normalises each image first and pads afterwards with 0, so padded pixels are 0 *after* normalisation. Here
images stay uint8 until the model normalises them, so ``collate`` pads them with ``pad_val`` and records each
sample's size before padding (``img_shape``); ``normalize`` then zeroes the padding after normalising, which
gives the model exactly mmseg's input. Labels are padded with 255 (ignored by loss and metrics).
"""

import torch
import torch.nn.functional as F

from .transforms import IMG, SEG

# mmseg's ResNeSt configs (SegDataPreProcessor): ImageNet mean/std on 0..255 RGB.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def _padded_size(shapes, size, size_divisor):
    h = max(s[0] for s in shapes)
    w = max(s[1] for s in shapes)
    if size is not None:
        h, w = max(h, size[0]), max(w, size[1])
    if size_divisor:
        h = -(-h // size_divisor) * size_divisor
        w = -(-w // size_divisor) * size_divisor
    return h, w


def collate(batch, size=None, size_divisor=None, pad_val=0, seg_pad_val=255):
    """List of dataset items -> one batch dict.

    batch: items with ``img`` uint8 (3, H_i, W_i) and optionally ``gt_semantic_seg`` int64 (H_i', W_i') (in test
    pipelines the label keeps the original size, so images and labels are padded separately).
    size: (h, w) minimum padded size (mmseg pads training batches to crop_size); size_divisor: round up to it.
    Returns ``img`` (B, 3, H, W) uint8, ``gt_semantic_seg`` (B, H', W') int64, ``img_shape`` [(h_i, w_i)]
    before padding, ``pad_shape`` (H, W), and every other key as a list (``img_path``, ``ori_shape``, ...).
    Use ``functools.partial(collate, size=crop_size)`` as a DataLoader's collate_fn.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    img_shapes = [tuple(item[IMG].shape[-2:]) for item in batch]
    h, w = _padded_size(img_shapes, size, size_divisor)
    images = [F.pad(item[IMG], (0, w - s[1], 0, h - s[0]), value=pad_val) for item, s in zip(batch, img_shapes)]
    out = {IMG: torch.stack(images), "img_shape": img_shapes, "pad_shape": (h, w)}
    if all(item.get(SEG) is not None for item in batch):
        seg_shapes = [tuple(item[SEG].shape[-2:]) for item in batch]
        sh, sw = _padded_size(seg_shapes, size, size_divisor)
        labels = [
            F.pad(item[SEG], (0, sw - s[1], 0, sh - s[0]), value=seg_pad_val) for item, s in zip(batch, seg_shapes)
        ]
        out[SEG] = torch.stack(labels)
    for key in batch[0]:
        if key not in (IMG, SEG):
            out[key] = [item.get(key) for item in batch]
    return out


def normalize(img, img_shape=None, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """(B, 3, H, W) uint8 -> float32 ``(img - mean) / std``, with the padding (outside each ``img_shape``) set to
    0 as in mmseg, where padding happens after normalisation."""
    x = img.float()
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    x = (x - mean_t) / std_t
    if img_shape is not None:
        for i, (h, w) in enumerate(img_shape):
            x[i, :, h:, :] = 0
            x[i, :, :, w:] = 0
    return x
