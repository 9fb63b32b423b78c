"""Datasets from a config's `data` dict (what `_base_/datasets/*.py` and the synthetic configs define).

data = dict(type='cityscapes' | 'ade20k', root, train_split, val_split, scale, ratio_range, crop_size,
            cat_max_ratio, batch_size, num_workers, tta_ratios)
     | dict(type='synthetic', num_classes, size, train_samples, val_samples, train_seed, val_seed, crop_size,
            batch_size, num_workers, tta_ratios)
Training sets get mmseg's training pipeline built from these keys (RandomResize(scale, ratio_range) ->
RandomCrop(crop_size, cat_max_ratio) -> RandomFlip(0.5) -> PhotoMetricDistortion; the synthetic set, generated at
its final size, only RandomFlip(0.5)). Validation sets get no pipeline: evaluation resizes each image to `scale`
itself and scores at the original resolution, as mmseg does.
"""
import difflib
import numbers
import os
from typing import Iterable, Optional

from resnest_fast.segmentation.inference import check_scale
from resnest_fast.utils import check_number, not_a_file

from .datasets import ADE20KDataset, CityscapesDataset
from .synthetic import SyntheticDataset
from .transforms import Compose, PhotoMetricDistortion, RandomCrop, RandomFlip, RandomResize

__all__ = ["DATASET_TYPES", "DATA_KEYS", "TTA_RATIO_RANGE", "build_dataset", "train_pipeline", "check_data_config",
           "check_known_keys", "check_tta_ratios"]

DATASET_TYPES = ("cityscapes", "ade20k", "synthetic")
_REAL = {"cityscapes": CityscapesDataset, "ade20k": ADE20KDataset}
# every key of `data` that something reads (reduce_zero_label is the dataset's own rule, kept for mmseg's configs)
DATA_KEYS = ("type", "root", "train_split", "val_split", "scale", "ratio_range", "crop_size", "cat_max_ratio",
             "batch_size", "num_workers", "tta_ratios", "reduce_zero_label", "num_classes", "size", "train_samples",
             "val_samples", "train_seed", "val_seed")


def check_known_keys(section: str, values: dict, known: Iterable[str], where: str) -> None:
    """ValueError naming the first key of `values` outside `known` (a misspelt key would otherwise be ignored and
    its default used), with the closest known key as a suggestion."""
    known = tuple(known)
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {section}.{close[0]}?)" if close else f" (known: {', '.join(known)})"
            raise ValueError(f"{where}: unknown key {section}.{key}{hint}")


# data.tta_ratios bounds: mmseg's configs use 0.5-1.75. Below a quarter a small image shrinks to nothing (mmcv's
# rescale then fails on a 0-pixel edge); above four times a 2048x1024 Cityscapes image becomes 8192x4096, whose 19
# class logits alone take 2.4 GiB in fp32 (a ratio of 1e6 asked for 1.4e16 bytes).
TTA_RATIO_RANGE = (0.25, 4.0)


def check_tta_ratios(ratios, where: str):
    """data.tta_ratios as a tuple of floats (None when unset), or a ValueError naming it: a non-empty list or tuple
    of numbers within TTA_RATIO_RANGE."""
    if ratios is None:
        return None
    low, high = TTA_RATIO_RANGE
    wanted = f"a list of numbers from {low} to {high} (mmseg's: (0.5, 0.75, 1.0, 1.25, 1.5, 1.75))"
    if not isinstance(ratios, (list, tuple)) or not ratios or any(
            isinstance(r, bool) or not isinstance(r, (int, float)) for r in ratios):
        raise ValueError(f"{where}: data.tta_ratios must be {wanted}, got {ratios!r}")
    outside = [r for r in ratios if not low <= r <= high]  # NaN included
    if outside:
        raise ValueError(f"{where}: data.tta_ratios must be {wanted}, got {outside[0]!r} in {tuple(ratios)!r}")
    return tuple(float(r) for r in ratios)


# data keys -> what they hold; read by the pipelines, the synthetic set and the evaluation, which would otherwise
# fail on a malformed one with an unpacking error or a traceback naming no key
_PAIRS = {"scale": "(long, short edge)", "crop_size": "(h, w)", "size": "(h, w)"}
_COUNTS = ("num_classes", "train_samples", "val_samples")


def _check_count(value, key: str, where: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
        raise ValueError(f"{where}: data.{key} must be a positive whole number, got {value!r}")


def _check_values(data: dict, where: str) -> None:
    for key, meaning in _PAIRS.items():
        value = data.get(key)
        if value is not None and not (isinstance(value, (list, tuple)) and len(value) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
            raise ValueError(f"{where}: data.{key} must be a pair of positive ints {meaning}, got {value!r}")
    if data.get("scale") is not None:
        check_scale(data["scale"], f"{where}: data.scale")  # the bound on the pixels an image is resized to
    for key in _COUNTS:
        _check_count(data.get(key), key, where)
    ratios = data.get("ratio_range")
    if ratios is not None:
        if not (isinstance(ratios, (list, tuple)) and len(ratios) == 2):
            raise ValueError(f"{where}: data.ratio_range must be a pair (low, high) of positive numbers, "
                             f"got {ratios!r}")
        low, high = (check_number(r, f"{where}: data.ratio_range item") for r in ratios)
        if not 0 < low <= high:
            raise ValueError(f"{where}: data.ratio_range must be a pair (low, high) of positive numbers with low <= "
                             f"high, got {ratios!r}")
    if data.get("cat_max_ratio") is not None and check_number(
            data["cat_max_ratio"], f"{where}: data.cat_max_ratio") > 1:
        raise ValueError(f"{where}: data.cat_max_ratio must be at most 1 (1: no limit), got {data['cat_max_ratio']!r}")


def check_data_config(cfg: dict) -> dict:
    """The config's `data` dict, or a ValueError saying what is missing."""
    data = cfg.get("data")
    where = cfg.get("filename", "the config")
    if data is None:
        raise ValueError(
            f"{where} has no `data = dict(...)`: training and evaluation need a dataset (inherit one of "
            "resnest_fast/segmentation/configs/_base_/datasets/*.py, or see the synthetic configs)")
    if not isinstance(data, dict):
        raise ValueError(f"{where}: `data` must be a dict, got {type(data).__name__}")
    kind = str(data.get("type", "")).lower()
    if kind not in DATASET_TYPES:
        raise ValueError(f"{where}: data.type must be one of {DATASET_TYPES}, got {data.get('type')!r}")
    check_known_keys("data", data, DATA_KEYS, where)
    if "batch_size" not in data:
        raise ValueError(f"{where}: data.batch_size (images per process) is missing")
    check_tta_ratios(data.get("tta_ratios"), where)
    _check_values(data, where)
    return data


def train_pipeline(data: dict) -> Compose:
    """mmseg's training pipeline for a real dataset, from the data dict's scale, ratio_range, crop_size and
    cat_max_ratio."""
    return Compose([
        RandomResize(tuple(data["scale"]), ratio_range=tuple(data.get("ratio_range", (0.5, 2.0))), keep_ratio=True),
        RandomCrop(tuple(data["crop_size"]), cat_max_ratio=data.get("cat_max_ratio", 0.75), ignore_index=255),
        RandomFlip(prob=0.5),
        PhotoMetricDistortion(),
    ])


def build_dataset(data: dict, split: str, root: Optional[str] = None, seed: int = 0):
    """The 'train' or 'val' dataset of a data dict. root overrides data['root'] (real datasets); seed seeds the
    training augmentations (a sample's draws depend on (seed, pass, index) only). Raises FileNotFoundError
    naming the folder when the data is not where the config (or root) says."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    kind = str(data.get("type", "")).lower()
    if kind == "synthetic":
        if root is not None:
            raise ValueError(f"a data root ({root!r}, --data-root) was given for the synthetic dataset, which "
                             f"generates its images and reads no folder: leave it out, or use a config whose "
                             f"data.type is one of {[t for t in DATASET_TYPES if t != 'synthetic']}")
        size = tuple(data.get("size", (64, 64)))
        common = dict(size=size, num_classes=int(data.get("num_classes", 6)))
        # an empty set fails only later: the training sampler deep in the first batch, validation as 0/0 metrics
        samples = data.get(f"{split}_samples", 1000 if split == "train" else 50)
        _check_count(samples, f"{split}_samples", "the data config")
        if split == "train":
            return SyntheticDataset(int(samples), seed=data.get("train_seed", 0),
                                    pipeline=Compose([RandomFlip(prob=0.5)]), **common)
        return SyntheticDataset(int(samples), seed=data.get("val_seed", 1), **common)
    if kind not in _REAL:
        raise ValueError(f"data.type must be one of {DATASET_TYPES}, got {data.get('type')!r}")
    root = root if root is not None else data.get("root")
    if not root:
        raise ValueError(f"data.root is not set for the {kind} dataset (pass --data-root DIR)")
    if os.path.exists(root) and not os.path.isdir(root):
        raise FileNotFoundError(f"{kind} data root {root!r} is {not_a_file(root) or 'a file'}, not a folder (the "
                                "config's data.root, or --data-root: the dataset's folder)")
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"{kind} data root {root!r} does not exist (the config's data.root, or --data-root; relative paths are "
            f"taken from the current folder {os.getcwd()!r})")
    split_name = data.get(f"{split}_split", {"train": "train", "val": "val"}[split] if kind == "cityscapes"
                          else {"train": "training", "val": "validation"}[split])
    pipeline = train_pipeline(data) if split == "train" else None
    return _REAL[kind](root, split=split_name, pipeline=pipeline, seed=seed)
