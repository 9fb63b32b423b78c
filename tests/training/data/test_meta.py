"""Class names and palettes against mmseg's METAINFO (read from mmseg's source) and the official label table."""
import numpy as np
from cityscapesscripts.helpers import labels as cs

from resnest_fast.training.data import meta
from tests.training.reference import mmseg_dataset_metainfo


def test_cityscapes_matches_mmseg():
    info = mmseg_dataset_metainfo("cityscapes.py", "CityscapesDataset")
    assert meta.CITYSCAPES_CLASSES == tuple(info["classes"])
    assert meta.CITYSCAPES_PALETTE == tuple(tuple(c) for c in info["palette"])


def test_ade20k_matches_mmseg():
    info = mmseg_dataset_metainfo("ade.py", "ADE20KDataset")
    assert meta.ADE20K_CLASSES == tuple(info["classes"])
    assert meta.ADE20K_PALETTE == tuple(tuple(c) for c in info["palette"])


def test_shapes_of_the_tables():
    assert len(meta.CITYSCAPES_CLASSES) == len(meta.CITYSCAPES_PALETTE) == 19
    assert len(meta.ADE20K_CLASSES) == len(set(meta.ADE20K_CLASSES)) == len(meta.ADE20K_PALETTE) == 150
    for colour in meta.CITYSCAPES_PALETTE + meta.ADE20K_PALETTE:
        assert len(colour) == 3 and all(0 <= v <= 255 for v in colour)


def test_id_to_train_id_table_against_the_official_labels():
    lut = meta.cityscapes_id_to_train_id_lut()
    by_id = {lab.id: lab for lab in cs.labels}
    for value in range(256):
        lab = by_id.get(value)
        expected = lab.trainId if lab is not None and lab.trainId not in (255, -1) else 255
        assert lut[value] == expected, value
    assert np.count_nonzero(lut != 255) == 19
