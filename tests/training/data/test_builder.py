"""Datasets from a config's `data` dict: the shipped configs' pipelines are build_pipeline's, validation sets come
unresized at the original resolution, and a missing root or data dict is an error that names it."""
import pytest

from resnest_fast.segmentation import load_config
from resnest_fast.training.data import (
    ADE20KDataset,
    CityscapesDataset,
    SyntheticDataset,
    build_dataset,
    build_pipeline,
    check_data_config,
)

CITYSCAPES = "resnest_s101-d8_fcn_4xb2-80k_cityscapes-512x1024"
ADE = "resnest_s101-d8_fcn_4xb4-160k_ade20k-512x512"
SYNTHETIC = "resnest_s50-d8-w16_fcn_1xb8-400_synthetic-64x64"


def test_real_datasets_get_mmsegs_training_pipeline_and_no_test_pipeline(cityscapes_root, ade_root):
    for name, root, cls, kind in ((CITYSCAPES, cityscapes_root[0], CityscapesDataset, "cityscapes"),
                                  (ADE, ade_root[0], ADE20KDataset, "ade20k")):
        data = check_data_config(load_config(name))
        train = build_dataset(data, "train", root=root, seed=3)
        assert type(train) is cls and train.seed == 3
        assert repr(train.pipeline) == repr(build_pipeline(kind, "train", data["crop_size"]))
        val = build_dataset(data, "val", root=root)
        assert val.pipeline is None and len(val) == 1
        item = val[0]
        assert item["img"].shape[1:] == item["gt_semantic_seg"].shape  # the original resolution


def test_synthetic_sets_follow_the_config():
    data = check_data_config(load_config(SYNTHETIC))
    train, val = build_dataset(data, "train"), build_dataset(data, "val")
    assert isinstance(train, SyntheticDataset) and (len(train), len(val)) == (4000, 64)
    assert train.size == val.size == (64, 64) and train.num_classes == val.num_classes == 7
    assert train.seed != val.seed and "RandomFlip" in repr(train.pipeline) and val.pipeline is None


def test_missing_data_and_roots_are_named(tmp_path):
    cfg = load_config(CITYSCAPES)
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=f"cityscapes data root '{missing}' does not exist"):
        build_dataset(cfg["data"], "train", root=missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="leftImg8bit/val"):
        build_dataset(cfg["data"], "val", root=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="mine.py has no `data = dict"):
        check_data_config({"model": {}, "filename": "mine.py"})
    with pytest.raises(ValueError, match="data.type must be one of"):
        check_data_config({"data": {"type": "coco", "batch_size": 2}})
    with pytest.raises(ValueError, match="data.batch_size"):
        check_data_config({"data": {"type": "synthetic"}})
    with pytest.raises(ValueError, match="split must be 'train' or 'val'"):
        build_dataset(cfg["data"], "test")
    # build_dataset without check_data_config first: an empty synthetic set is refused, not a sampler error later
    for split, key in (("train", "train_samples"), ("val", "val_samples")):
        with pytest.raises(ValueError, match=rf"data\.{key} must be a positive whole number, got 0"):
            build_dataset({"type": "synthetic", key: 0}, split)
