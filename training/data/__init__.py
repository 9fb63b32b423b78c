"""Data for training and evaluating segmenters: Cityscapes and ADE20k in their real layouts, a generated dataset,
mmseg 1.x pipelines on numpy arrays, and batching. Runtime needs: numpy, pillow, torch, cityscapesscripts (label
table), tqdm (converter progress)."""

from .collate import IMAGENET_MEAN, IMAGENET_STD, collate, normalize
from .datasets import ADE20KDataset, CityscapesDataset, DataError, SegDataset
from .io import CorruptFileError, load_image, load_label
from .meta import ADE20K_CLASSES, ADE20K_PALETTE, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from .synthetic import SyntheticDataset
from .transforms import (
    Compose,
    Pad,
    PhotoMetricDistortion,
    RandomCrop,
    RandomFlip,
    RandomResize,
    Resize,
    build_pipeline,
)
from .samplers import InfiniteSampler
from .builder import DATASET_TYPES, build_dataset, check_data_config, train_pipeline
