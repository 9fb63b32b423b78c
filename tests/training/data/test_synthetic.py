"""The generated dataset: deterministic, exact masks, the datasets' item format, and learnable."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from resnest_fast.training.data import SyntheticDataset, build_pipeline, collate, normalize
from resnest_fast.training.metrics import SegEvaluator


def test_deterministic_by_seed_and_index():
    a = SyntheticDataset(5, size=(40, 48), num_classes=5, seed=7)
    b = SyntheticDataset(5, size=(40, 48), num_classes=5, seed=7)
    for i in range(5):
        x, y = a[i], b[i]
        assert torch.equal(x["img"], y["img"]) and torch.equal(x["gt_semantic_seg"], y["gt_semantic_seg"])
    assert not torch.equal(a[0]["img"], a[1]["img"])
    other = SyntheticDataset(5, size=(40, 48), num_classes=5, seed=8)
    assert not torch.equal(a[0]["img"], other[0]["img"])
    assert a.PALETTE == other.PALETTE  # classes look the same whatever the seed (train and val agree)


def test_item_format_matches_the_real_datasets():
    ds = SyntheticDataset(3, size=(24, 32), num_classes=4, seed=0)
    item = ds[2]
    assert item["img"].dtype == torch.uint8 and item["img"].shape == (3, 24, 32)
    assert item["gt_semantic_seg"].dtype == torch.int64 and item["gt_semantic_seg"].shape == (24, 32)
    assert item["ori_shape"] == (24, 32) and "index=2" in item["img_path"] and "seed=0" in item["seg_path"]
    assert len(ds.CLASSES) == len(ds.PALETTE) == 4 and ds.CLASSES[0] == "background"
    with pytest.raises(IndexError):
        ds[3]
    assert "num_classes=4" in repr(ds)


def test_every_class_appears_and_labels_are_in_range():
    ds = SyntheticDataset(40, size=(48, 48), num_classes=7, seed=1)
    counts = np.zeros(7, dtype=np.int64)
    for i in range(len(ds)):
        label = ds.generate(i)[1]
        assert label.max() < 7
        counts += np.bincount(label.ravel(), minlength=7)
    assert (counts > 0).all()
    assert counts[0] / counts.sum() < 0.9  # shapes cover a real share of the pixels


def test_masks_are_exactly_what_was_painted():
    ds = SyntheticDataset(6, size=(64, 80), num_classes=6, seed=2, noise=0.0)
    for i in range(len(ds)):
        img, label = ds.generate(i)
        img = img.astype(int)
        # Background pixels carry a smooth gradient: two horizontally adjacent background pixels differ by a
        # level or two. A mask off by one pixel would put shape colours on background pixels.
        both_bg = (label[:, 1:] == 0) & (label[:, :-1] == 0)
        assert np.abs(img[:, 1:] - img[:, :-1]).max(-1)[both_bg].max() <= 2
        # Shape pixels have their class colour, times a texture shade in {0.75, 1, 1.25}, jittered by <= 15.
        for k in range(1, 6):
            pixels = img[label == k]
            if pixels.size == 0:
                continue
            base = np.array(ds.PALETTE[k], dtype=float)
            err = np.min([np.abs(pixels - np.clip(base * s, 0, 255)).max(-1) for s in (0.75, 1.0, 1.25)], axis=0)
            assert err.max() <= 15 * 1.25 + 1, (i, k)


def test_pipeline_is_applied_reproducibly():
    ds = SyntheticDataset(2, size=(64, 64), num_classes=4, seed=3,
                          pipeline=build_pipeline("ade20k", "train", crop_size=(32, 32)))
    x = ds[0]
    assert x["img"].shape[-2:] <= (32, 32) and torch.equal(x["img"], ds[0]["img"])


def test_bad_arguments():
    with pytest.raises(ValueError):
        SyntheticDataset(1, num_classes=1)
    with pytest.raises(ValueError):
        SyntheticDataset(1, size=(4, 4))



def test_a_small_segmenter_learns_it_far_above_chance(one_thread):
    torch.manual_seed(0)
    nc, size = 5, (32, 32)
    train = SyntheticDataset(320, size=size, num_classes=nc, seed=0)
    val = SyntheticDataset(32, size=size, num_classes=nc, seed=1)

    def block(i, o, d):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=d, dilation=d), nn.BatchNorm2d(o), nn.ReLU())

    model = nn.Sequential(block(3, 16, 1), block(16, 16, 2), block(16, 16, 4), nn.Conv2d(16, nc, 1))
    opt = torch.optim.AdamW(model.parameters(), 1e-2)
    for _ in range(2):
        for batch in torch.utils.data.DataLoader(train, batch_size=16, shuffle=True, collate_fn=collate):
            loss = F.cross_entropy(model(normalize(batch["img"])), batch["gt_semantic_seg"], ignore_index=255)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    evaluator = SegEvaluator(nc)
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(val, batch_size=16, collate_fn=collate):
            evaluator.update(model(normalize(batch["img"])).argmax(1), batch["gt_semantic_seg"])
    # Uniform guessing scores an mIoU of about 0.1 here (IoU_c = p_c / nc / (p_c + 1 / nc - p_c / nc)).
    assert evaluator.compute()["mIoU"] > 0.6, evaluator.table()
