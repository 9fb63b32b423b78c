"""Cityscapes and ADE20k in their real on-disk layouts, with mmseg's file pairing and label semantics.

Each item is a dict:
  img              uint8 tensor (3, H, W), RGB, not normalised (the model normalises)
  gt_semantic_seg  int64 tensor (H, W), class ids, 255 = ignore
  img_path, seg_path, ori_shape (H, W as decoded), and what the pipeline adds (img_shape, scale_factor, flip, ...)

Files are listed once at construction (sorted by image path, as mmseg sorts them), every image must have its
label and every label its image: a missing one is an error naming the file and the path expected, rather than a
silently shorter dataset. A sample whose label does not fit the dataset (its size differs from the image's, or it
holds a class id that is neither a class nor 255) raises DataError naming the files when it is loaded. Random
transforms draw from a generator seeded by (seed, pass, index), so a sample does not depend on which DataLoader
worker produced it.
The pass is the one an ``InfiniteSampler`` sends along with each index (``dataset[(index, pass)]``), or else the
epoch given to ``set_epoch`` (which persistent DataLoader workers, holding their own copy of the dataset, do not
see: prefer the sampler).
"""

import glob
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from .io import DataError, load_image, load_label
from .meta import ADE20K_CLASSES, ADE20K_PALETTE, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from .transforms import IMG, SEG


def data_error_message(exc: BaseException) -> str:
    """The one-line message of a data error, also when a DataLoader worker raised it: torch re-raises it in the
    main process with the worker's whole traceback in the message, whose last line is the original
    `module.Type: message`."""
    text = str(exc).strip()
    if "Traceback" in text:
        last = text.splitlines()[-1]
        head, sep, rest = last.partition(": ")
        text = rest if sep and " " not in head else last
    return text


def resolve_index(index, length, default_pass):
    """``index`` or ``(index, pass)`` -> (index in [0, length), pass)."""
    draw = default_pass
    if isinstance(index, tuple):
        index, draw = index
    if not -length <= index < length:
        raise IndexError(f"index {index} out of range for a dataset of {length} samples")
    return int(index) % length, int(draw)


def to_tensors(results):
    """(H, W, 3) uint8 image and (H, W) label arrays -> (3, H, W) uint8 and (H, W) int64 tensors, in place."""
    results[IMG] = torch.from_numpy(np.ascontiguousarray(results[IMG].transpose(2, 0, 1)))
    if results.get(SEG) is not None:
        results[SEG] = torch.from_numpy(results[SEG].astype(np.int64))
    return results


class SegDataset(Dataset):
    """Pairs of (image file, label file) read with mmseg's loaders, then ``pipeline(results, rng)``.

    reduce_zero_label: mmseg's rule for labels whose 0 means "no class" (0 -> 255, v -> v - 1).
    """

    CLASSES = ()
    PALETTE = ()

    def __init__(self, img_paths, seg_paths, pipeline=None, reduce_zero_label=False, seed=0):
        if len(img_paths) != len(seg_paths):
            raise ValueError(f"{len(img_paths)} images but {len(seg_paths)} label files")
        self.img_paths = list(img_paths)
        self.seg_paths = list(seg_paths)
        self.pipeline = pipeline
        self.reduce_zero_label = reduce_zero_label
        self.seed = seed
        self.epoch = 0

    @property
    def num_classes(self):
        return len(self.CLASSES)

    def set_epoch(self, epoch):
        """The pass used for plain integer indices: the random draws of a new epoch (same epoch, same samples)."""
        self.epoch = int(epoch)

    def rng(self, index, draw=None):
        """The generator of the pipeline for sample ``index`` in pass ``draw`` (default: the current epoch)."""
        return np.random.default_rng([self.seed, self.epoch if draw is None else draw, index])

    def __len__(self):
        return len(self.img_paths)

    def load(self, index):
        """The decoded sample before the pipeline: numpy arrays, label as uint8."""
        img_path, seg_path = self.img_paths[index], self.seg_paths[index]
        img = load_image(img_path)
        seg = load_label(seg_path, reduce_zero_label=self.reduce_zero_label, num_classes=self.num_classes or None)
        if img.shape[:2] != seg.shape:
            raise DataError(
                f"image {img_path} is {img.shape[1]}x{img.shape[0]} but its label {seg_path} is "
                f"{seg.shape[1]}x{seg.shape[0]}"
            )
        return {IMG: img, SEG: seg, "img_path": img_path, "seg_path": seg_path, "ori_shape": img.shape[:2]}

    def __getitem__(self, index):
        """``dataset[i]`` or ``dataset[(i, pass)]`` (what ``InfiniteSampler`` yields)."""
        index, draw = resolve_index(index, len(self), self.epoch)
        results = self.load(index)
        if self.pipeline is not None:
            results = self.pipeline(results, self.rng(index, draw))
        return to_tensors(results)

    def __repr__(self):
        return f"{type(self).__name__}({len(self)} samples, {self.num_classes} classes, pipeline={self.pipeline!r})"


def _by_stem(folder, suffix, what):
    """{stem: path} of the files in `folder` whose name ends with `suffix` in any case (hidden files, e.g. macOS's
    '._*', left out); FileNotFoundError naming both files where two stems differ only by the suffix's case."""
    found = {}
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return found
    for name in names:
        path = os.path.join(folder, name)
        # not only regular files: a FIFO or a link to nothing is then named by the loader for what it is
        if name.startswith(".") or not name.lower().endswith(suffix) or os.path.isdir(path):
            continue
        stem = name[: -len(suffix)]
        if stem in found:
            raise FileNotFoundError(f"{what} {found[stem]} and {path} differ only by the case of {suffix!r}: keep one")
        found[stem] = path
    return found


def _check_no_orphan_labels(seg_paths, used, expected_image):
    """FileNotFoundError naming the first label file of `seg_paths` that no image of `used` pairs with, and the
    image expected for it: training and scores would otherwise silently cover fewer images than the split has."""
    orphans = sorted(set(seg_paths) - set(used))
    if orphans:
        more = f" ({len(orphans) - 1} more label file(s) without an image)" if len(orphans) > 1 else ""
        raise FileNotFoundError(f"no image for label {orphans[0]}: expected {expected_image(orphans[0])}{more}")


def _check_split(split, allowed, dataset):
    if split not in allowed:
        raise ValueError(f"{dataset} split must be one of {allowed}, got {split!r}")


class CityscapesDataset(SegDataset):
    """Cityscapes fine annotations: ``root/leftImg8bit/{split}/{city}/*_leftImg8bit.png`` with labels
    ``root/gtFine/{split}/{city}/*_gtFine_labelTrainIds.png`` (19 classes, 255 ignored). The trainId files are
    made from the official *_gtFine_labelIds.png by ``python -m resnest_fast.training.data.convert_cityscapes``.
    The suffixes are matched exactly, as mmseg does: the official scripts and that converter write them so, and a
    file spelt otherwise was not made by them (a label without its image is still refused, never skipped)."""

    CLASSES = CITYSCAPES_CLASSES
    PALETTE = CITYSCAPES_PALETTE
    IMG_SUFFIX = "_leftImg8bit.png"
    SEG_SUFFIX = "_gtFine_labelTrainIds.png"

    def __init__(self, root, split="train", pipeline=None, seed=0):
        _check_split(split, ("train", "val"), "Cityscapes")
        self.root = root
        self.split = split
        img_dir = os.path.join(root, "leftImg8bit", split)
        seg_dir = os.path.join(root, "gtFine", split)
        if not os.path.isdir(img_dir):
            raise FileNotFoundError(f"Cityscapes image folder not found: {img_dir} (root={root!r})")
        img_paths = sorted(glob.glob(os.path.join(img_dir, "*", "*" + self.IMG_SUFFIX)))
        if not img_paths:
            raise FileNotFoundError(f"no *{self.IMG_SUFFIX} images in {img_dir}/<city>/")
        seg_paths = []
        for img_path in img_paths:
            city = os.path.basename(os.path.dirname(img_path))
            stem = os.path.basename(img_path)[: -len(self.IMG_SUFFIX)]
            seg_path = os.path.join(seg_dir, city, stem + self.SEG_SUFFIX)
            if not os.path.isfile(seg_path):
                hint = ""
                if os.path.isfile(os.path.join(seg_dir, city, stem + "_gtFine_labelIds.png")):
                    hint = (
                        " (its _gtFine_labelIds.png exists: run "
                        f"`python -m resnest_fast.training.data.convert_cityscapes {root}`)"
                    )
                raise FileNotFoundError(f"no label for image {img_path}: expected {seg_path}{hint}")
            seg_paths.append(seg_path)

        def expected_image(seg_path):
            city = os.path.basename(os.path.dirname(seg_path))
            return os.path.join(img_dir, city, os.path.basename(seg_path)[: -len(self.SEG_SUFFIX)] + self.IMG_SUFFIX)

        _check_no_orphan_labels(glob.glob(os.path.join(seg_dir, "*", "*" + self.SEG_SUFFIX)), seg_paths,
                                expected_image)
        super().__init__(img_paths, seg_paths, pipeline=pipeline, reduce_zero_label=False, seed=seed)


class ADE20KDataset(SegDataset):
    """ADE20k (SceneParsing challenge 2016): ``ADEChallengeData2016/images/{split}/*.jpg`` with labels
    ``ADEChallengeData2016/annotations/{split}/*.png``; 150 classes after mmseg's reduce_zero_label
    (0 "other" -> 255, v -> v - 1). root is either ADEChallengeData2016 or the folder that contains it.

    The extensions are matched in any case (``.JPG`` too), where mmseg's ``img_suffix='.jpg'`` skips other cases
    silently: the release spells them all in lower case, so on it the file list is mmseg's, and a copy made through
    a tool that upper-cases extensions keeps every image instead of silently losing some (and scoring fewer)."""

    CLASSES = ADE20K_CLASSES
    PALETTE = ADE20K_PALETTE
    IMG_SUFFIX = ".jpg"
    SEG_SUFFIX = ".png"

    def __init__(self, root, split="training", pipeline=None, seed=0):
        _check_split(split, ("training", "validation"), "ADE20k")
        self.root = self.resolve_root(root)
        self.split = split
        img_dir = os.path.join(self.root, "images", split)
        seg_dir = os.path.join(self.root, "annotations", split)
        if not os.path.isdir(img_dir):
            raise FileNotFoundError(f"ADE20k image folder not found: {img_dir}")
        images = _by_stem(img_dir, self.IMG_SUFFIX, "images")
        if not images:
            raise FileNotFoundError(f"no *{self.IMG_SUFFIX} images in {img_dir}")
        labels = _by_stem(seg_dir, self.SEG_SUFFIX, "labels")
        img_paths = sorted(images.values())
        seg_paths = []
        for img_path in img_paths:
            stem = os.path.basename(img_path)[: -len(self.IMG_SUFFIX)]
            if stem not in labels:
                raise FileNotFoundError(f"no label for image {img_path}: expected "
                                        f"{os.path.join(seg_dir, stem + self.SEG_SUFFIX)}")
            seg_paths.append(labels[stem])
        _check_no_orphan_labels(labels.values(), seg_paths, lambda seg_path: os.path.join(
            img_dir, os.path.basename(seg_path)[: -len(self.SEG_SUFFIX)] + self.IMG_SUFFIX))
        super().__init__(img_paths, seg_paths, pipeline=pipeline, reduce_zero_label=True, seed=seed)

    @staticmethod
    def resolve_root(root):
        nested = os.path.join(root, "ADEChallengeData2016")
        if os.path.isdir(os.path.join(nested, "images")):
            return nested
        if os.path.isdir(os.path.join(root, "images")):
            return root
        raise FileNotFoundError(
            f"ADE20k not found under {root!r}: expected {os.path.join(nested, 'images')} or "
            f"{os.path.join(root, 'images')}"
        )
