"""Small datasets written in their real on-disk layouts."""
import numpy as np
import pytest

from tests.training.data.files import smooth_image, write_jpg, write_png


@pytest.fixture
def cityscapes_root(tmp_path):
    """root/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png with *_gtFine_labelTrainIds.png labels (values 0..18
    and 255). Returns (root, {image path: (image, label)})."""
    rng = np.random.default_rng(0)
    root = tmp_path / "cityscapes"
    written = {}
    frames = {"train": [("aachen", "000000_000019"), ("aachen", "000001_000019"), ("bochum", "000000_000313")],
              "val": [("frankfurt", "000000_000294")]}
    for split, items in frames.items():
        for city, frame in items:
            h, w = 12, 20
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            label = rng.choice(np.r_[np.arange(19), 255], size=(h, w)).astype(np.uint8)
            img_path = root / "leftImg8bit" / split / city / f"{city}_{frame}_leftImg8bit.png"
            seg_path = root / "gtFine" / split / city / f"{city}_{frame}_gtFine_labelTrainIds.png"
            write_png(str(img_path), img)
            write_png(str(seg_path), label)
            written[str(img_path)] = (img, label)
    return str(root), written


@pytest.fixture
def ade_root(tmp_path):
    """tmp/ADEChallengeData2016/{images,annotations}/{training,validation}; labels use 0 (other), 1..150 and 255.
    Returns (folder containing ADEChallengeData2016, {image path: (image, raw label)})."""
    rng = np.random.default_rng(1)
    written = {}
    for split, names in {"training": ["ADE_train_00000001", "ADE_train_00000002"],
                         "validation": ["ADE_val_00000001"]}.items():
        for name in names:
            h, w = 16, 24
            img = smooth_image(rng, h, w)
            label = rng.choice(np.r_[0, 1, 2, 75, 149, 150, 255], size=(h, w)).astype(np.uint8)
            img_path = tmp_path / "ADEChallengeData2016" / "images" / split / f"{name}.jpg"
            write_jpg(str(img_path), img)
            write_png(str(tmp_path / "ADEChallengeData2016" / "annotations" / split / f"{name}.png"), label)
            written[str(img_path)] = (img, label)
    return str(tmp_path), written
