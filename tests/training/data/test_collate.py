"""Batching: bottom/right padding (image 0, label 255), sizes recorded, and mmseg's normalise-then-pad result."""
import numpy as np
import pytest
import torch

from resnest_fast.training.data.collate import IMAGENET_MEAN, IMAGENET_STD, collate, normalize
from tests.mmseg_reference import import_mmseg


def item(h, w, seed, label_hw=None):
    g = torch.Generator().manual_seed(seed)
    lh, lw = label_hw or (h, w)
    return {
        "img": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
        "gt_semantic_seg": torch.randint(0, 19, (lh, lw), generator=g, dtype=torch.int64),
        "img_path": f"img{seed}.png",
        "ori_shape": (h, w),
    }


def test_pads_to_the_largest_and_records_sizes():
    batch = [item(5, 9, 0), item(7, 4, 1)]
    out = collate(batch)
    assert out["img"].shape == (2, 3, 7, 9) and out["img"].dtype == torch.uint8
    assert out["gt_semantic_seg"].shape == (2, 7, 9) and out["gt_semantic_seg"].dtype == torch.int64
    assert out["img_shape"] == [(5, 9), (7, 4)] and out["pad_shape"] == (7, 9)
    assert out["img_path"] == ["img0.png", "img1.png"] and out["ori_shape"] == [(5, 9), (7, 4)]
    for i, (h, w) in enumerate(out["img_shape"]):
        assert torch.equal(out["img"][i, :, :h, :w], batch[i]["img"])
        assert torch.equal(out["gt_semantic_seg"][i, :h, :w], batch[i]["gt_semantic_seg"])
        assert (out["img"][i, :, h:] == 0).all() and (out["img"][i, :, :, w:] == 0).all()
        assert (out["gt_semantic_seg"][i, h:] == 255).all() and (out["gt_semantic_seg"][i, :, w:] == 255).all()


def test_size_and_size_divisor():
    out = collate([item(5, 9, 0)], size=(8, 12))
    assert out["img"].shape[-2:] == (8, 12) and out["gt_semantic_seg"].shape[-2:] == (8, 12)
    assert collate([item(5, 9, 0)], size_divisor=8)["img"].shape[-2:] == (8, 16)


def test_test_time_labels_at_original_size_are_padded_separately():
    out = collate([item(4, 6, 0, label_hw=(8, 12)), item(4, 6, 1, label_hw=(10, 10))])
    assert out["img"].shape[-2:] == (4, 6) and out["gt_semantic_seg"].shape[-2:] == (10, 12)


def test_normalize_zeroes_the_padding():
    batch = collate([item(5, 9, 0), item(7, 4, 1)])
    x = normalize(batch["img"], batch["img_shape"])
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(x[0, :, :5, :9], (batch["img"][0, :, :5, :9].float() - mean) / std)
    assert (x[0, :, 5:] == 0).all() and (x[1, :, :, 4:] == 0).all()


def test_matches_mmseg_stack_batch_after_normalisation():
    misc = import_mmseg("mmseg.utils.misc")
    batch = [item(5, 9, 0), item(7, 4, 1)]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    # mmseg's SegDataPreProcessor: normalise each image, then pad with 0 to `size`.
    ref, _ = misc.stack_batch([(b["img"].float() - mean) / std for b in batch], size=(8, 10), pad_val=0)
    ours = collate(batch, size=(8, 10))
    torch.testing.assert_close(normalize(ours["img"], ours["img_shape"]), ref)


def test_empty_batch_is_an_error():
    with pytest.raises(ValueError):
        collate([])
