"""Cityscapes and ADE20k read from trees in their real layouts; pairing, errors and reproducible pipelines."""
import os
import shutil

import numpy as np
import pytest
import torch

from resnest_fast.training.data import (
    ADE20KDataset,
    CityscapesDataset,
    CorruptFileError,
    RandomCrop,
    RandomFlip,
    build_pipeline,
    collate,
)
from tests.training.data.files import write_png


def check_item_types(item):
    assert item["img"].dtype == torch.uint8 and item["img"].ndim == 3 and item["img"].shape[0] == 3
    assert item["gt_semantic_seg"].dtype == torch.int64 and item["gt_semantic_seg"].ndim == 2


def test_cityscapes_reads_every_pair_in_sorted_order(cityscapes_root):
    root, written = cityscapes_root
    ds = CityscapesDataset(root, split="train")
    train_paths = sorted(p for p in written if f"{os.sep}train{os.sep}" in p)
    assert ds.img_paths == train_paths and len(ds) == 3 and ds.num_classes == 19
    for i, path in enumerate(train_paths):
        item = ds[i]
        check_item_types(item)
        img, label = written[path]
        np.testing.assert_array_equal(item["img"].permute(1, 2, 0).numpy(), img)
        np.testing.assert_array_equal(item["gt_semantic_seg"].numpy(), label)
        assert item["img_path"] == path
        assert item["seg_path"] == path.replace("leftImg8bit", "gtFine", 1).replace(
            "_leftImg8bit.png", "_gtFine_labelTrainIds.png")
        assert item["ori_shape"] == img.shape[:2]
    assert len(CityscapesDataset(root, split="val")) == 1
    assert "3 samples, 19 classes" in repr(ds)


def test_cityscapes_missing_label_names_image_and_expected_path(cityscapes_root):
    root, written = cityscapes_root
    img_path = sorted(written)[0]
    seg_path = img_path.replace("leftImg8bit", "gtFine", 1).replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png")
    os.rename(seg_path, seg_path.replace("labelTrainIds", "labelIds"))
    with pytest.raises(FileNotFoundError) as err:
        CityscapesDataset(root, split=img_path.split(os.sep)[-3])
    assert img_path in str(err.value) and seg_path in str(err.value)
    assert "convert_cityscapes" in str(err.value)  # the labelIds file is there: say how to make the trainIds


def test_cityscapes_bad_split_and_root(cityscapes_root, tmp_path):
    root, _ = cityscapes_root
    with pytest.raises(ValueError, match="split"):
        CityscapesDataset(root, split="training")
    with pytest.raises(FileNotFoundError, match="leftImg8bit"):
        CityscapesDataset(str(tmp_path / "elsewhere"), split="train")


def test_corrupt_image_is_named_when_loaded(cityscapes_root):
    root, written = cityscapes_root
    ds = CityscapesDataset(root, split="train")
    with open(ds.img_paths[1], "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n but then nothing sensible")
    ds[0]
    with pytest.raises(CorruptFileError, match=os.path.basename(ds.img_paths[1])):
        ds[1]


def test_image_and_label_of_different_sizes_is_an_error(cityscapes_root):
    root, _ = cityscapes_root
    ds = CityscapesDataset(root, split="val")
    write_png(ds.seg_paths[0], np.zeros((5, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match="5x5"):
        ds[0]


@pytest.mark.parametrize("nested", [True, False])
def test_ade20k_reduce_zero_label_and_both_roots(ade_root, nested):
    parent, written = ade_root
    root = parent if nested else os.path.join(parent, "ADEChallengeData2016")
    ds = ADE20KDataset(root, split="training")
    assert len(ds) == 2 and ds.num_classes == 150
    for i in range(len(ds)):
        item = ds[i]
        check_item_types(item)
        img, raw = written[ds.img_paths[i]]
        # reduce_zero_label, written out: 0 -> ignore, 1..150 -> 0..149, 255 stays ignored.
        expected = raw.astype(np.int64) - 1
        expected[(raw == 0) | (raw == 255)] = 255
        np.testing.assert_array_equal(item["gt_semantic_seg"].numpy(), expected)
        assert item["gt_semantic_seg"].max() <= 255 and set(np.unique(expected)) >= {0, 149, 255}
        # JPEG is lossy: the decoded image is close to what was written, in RGB order.
        diff = np.abs(item["img"].permute(1, 2, 0).numpy().astype(int) - img.astype(int))
        assert diff.mean() < 3.0
    assert len(ADE20KDataset(root, split="validation")) == 1


def test_ade20k_errors(ade_root, tmp_path):
    parent, written = ade_root
    with pytest.raises(ValueError, match="split"):
        ADE20KDataset(parent, split="train")
    with pytest.raises(FileNotFoundError, match="ADEChallengeData2016"):
        ADE20KDataset(str(tmp_path / "missing"))
    img_path = sorted(p for p in written if "training" in p)[0]
    seg_path = img_path.replace("images", "annotations").replace(".jpg", ".png")
    os.remove(seg_path)
    with pytest.raises(FileNotFoundError) as err:
        ADE20KDataset(parent, split="training")
    assert img_path in str(err.value) and seg_path in str(err.value)


def test_ade20k_reads_extensions_in_any_case(ade_root):
    """A copy whose tools upper-cased some extensions: every image is still read, with its own label (mmseg's
    img_suffix='.jpg' skipped the .JPG one: a split one image short, silently)."""
    parent, written = ade_root
    training = sorted(p for p in written if f"{os.sep}training{os.sep}" in p)
    renamed_img = training[1][: -len(".jpg")] + ".JPG"
    os.rename(training[1], renamed_img)
    seg = training[0].replace("images", "annotations").replace(".jpg", ".png")
    os.rename(seg, seg[: -len(".png")] + ".PNG")
    ds = ADE20KDataset(parent, split="training")
    assert ds.img_paths == sorted([training[0], renamed_img]) and len(ds) == 2
    for i, original in enumerate(training):
        raw = written[original][1]
        expected = np.where((raw == 0) | (raw == 255), 255, raw.astype(np.int64) - 1)
        np.testing.assert_array_equal(ds[i]["gt_semantic_seg"].numpy(), expected)


def test_ade20k_two_images_of_one_name_but_case_are_refused(ade_root):
    parent, written = ade_root
    first = sorted(p for p in written if f"{os.sep}training{os.sep}" in p)[0]
    twin = first[: -len(".jpg")] + ".JPG"
    shutil.copy(first, twin)
    a, b = sorted([first, twin])
    with pytest.raises(FileNotFoundError, match=rf"^images {a} and {b} differ only by the case of '\.jpg': keep one$"):
        ADE20KDataset(parent, split="training")


@pytest.mark.parametrize("dataset", ["ade20k", "cityscapes"])
def test_a_label_without_its_image_is_refused_naming_both(ade_root, cityscapes_root, dataset):
    """Every label must have its image as every image its label: an orphan label means a split shorter than its
    annotations say, silently."""
    if dataset == "ade20k":
        parent, written = ade_root
        imgs = sorted(p for p in written if f"{os.sep}training{os.sep}" in p)
        segs = [p.replace("images", "annotations").replace(".jpg", ".png") for p in imgs]
        make = lambda: ADE20KDataset(parent, split="training")  # noqa: E731
    else:
        parent, written = cityscapes_root
        imgs = sorted(p for p in written if f"{os.sep}train{os.sep}" in p)
        segs = [p.replace("leftImg8bit", "gtFine", 1).replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png")
                for p in imgs]
        make = lambda: CityscapesDataset(parent, split="train")  # noqa: E731
    os.remove(imgs[0])
    with pytest.raises(FileNotFoundError, match=rf"^no image for label {segs[0]}: expected {imgs[0]}$"):
        make()
    orphan = os.path.join(os.path.dirname(segs[-1]), "zz_" + os.path.basename(segs[-1]))  # sorts after segs[0]
    shutil.copy(segs[-1], orphan)
    with pytest.raises(FileNotFoundError, match=rf"^no image for label {segs[0]}: expected {imgs[0]} \(1 more label "
                       r"file\(s\) without an image\)$"):
        make()


def test_pipeline_is_reproducible_by_seed_epoch_and_index(cityscapes_root):
    root, _ = cityscapes_root
    pipeline = build_pipeline("cityscapes", "train", crop_size=(8, 8))
    a = CityscapesDataset(root, "train", pipeline=pipeline, seed=3)
    b = CityscapesDataset(root, "train", pipeline=pipeline, seed=3)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert torch.equal(x["img"], y["img"]) and torch.equal(x["gt_semantic_seg"], y["gt_semantic_seg"])
        assert x["img"].shape[-2:] == (8, 8)
    # Another epoch (or seed) draws other augmentations: over the three images, something differs.
    def draws(ds):
        return [(ds[i]["scale"], ds[i]["flip"], ds[i]["img"].sum().item()) for i in range(len(ds))]

    first = draws(a)
    assert [(a[(i, 1)]["scale"], a[(i, 1)]["flip"]) for i in range(3)] != [d[:2] for d in first]
    a.set_epoch(1)
    assert draws(a) != first
    assert torch.equal(a[0]["img"], a[(0, 1)]["img"])  # the epoch is the default pass
    assert draws(CityscapesDataset(root, "train", pipeline=pipeline, seed=4)) != first


def test_dataloader_workers_do_not_change_the_samples(cityscapes_root):
    from functools import partial

    root, _ = cityscapes_root
    crop = (8, 8)
    ds = CityscapesDataset(root, "train", pipeline=build_pipeline("cityscapes", "train", crop_size=crop), seed=5)
    collate_fn = partial(collate, size=crop)
    serial = list(torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_fn, num_workers=0))
    parallel = list(torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_fn, num_workers=2))
    for s, p in zip(serial, parallel):
        assert torch.equal(s["img"], p["img"]) and torch.equal(s["gt_semantic_seg"], p["gt_semantic_seg"])


def test_random_transform_without_generator_is_refused(cityscapes_root):
    root, _ = cityscapes_root
    results = CityscapesDataset(root, "val").load(0)
    for t in (RandomCrop(4), RandomFlip()):
        with pytest.raises(TypeError, match="numpy.random.Generator"):
            t(results)


def test_a_label_id_outside_the_classes_names_the_file_when_loaded(cityscapes_root):
    """Cityscapes has 19 classes: 19 and 77 are neither a class nor 255 (the loss would fail later with only
    `Target 77 is out of bounds`); 0..18 and 255 are fine, so the untouched samples still load."""
    from resnest_fast.training.data import DataError

    root, written = cityscapes_root
    ds = CityscapesDataset(root, split="train")
    label = np.array(written[ds.img_paths[1]][1])
    label[0, :3] = (77, 19, 77)
    write_png(ds.seg_paths[1], label)
    bad = sorted(set(np.unique(label).tolist()) - set(range(19)) - {255})
    with pytest.raises(DataError, match=rf"^label file {ds.seg_paths[1]} holds class id\(s\) "
                       rf"{', '.join(map(str, bad))}: the dataset has 19 classes \(0\.\.18, 255 = ignore\)$"):
        ds[1]
    assert ds[0]["gt_semantic_seg"].shape == (12, 20) and ds[2]["gt_semantic_seg"].shape == (12, 20)
