"""The labelIds -> labelTrainIds converter: official mapping, skip/overwrite, atomic writes, failures reported."""
import os
import subprocess
import sys

import numpy as np
import pytest
from cityscapesscripts.helpers import labels as cs
from PIL import Image

from resnest_fast.training.data import convert_cityscapes as conv
from tests.training.data.files import write_png

FILES = [("train", "aachen", "aachen_000000_000019"), ("train", "bochum", "bochum_000000_000313"),
         ("val", "frankfurt", "frankfurt_000000_000294")]


def expected_train_ids(ids):
    """cityscapesscripts' table applied here, independently of the package: trainIds 255 and -1 and ids that
    are not in the table become 255."""
    table = {lab.id: lab.trainId for lab in cs.labels}
    out = np.full(ids.shape, 255, dtype=np.uint8)
    for value in np.unique(ids):
        train_id = table.get(int(value), 255)
        out[ids == value] = train_id if 0 <= train_id < 255 else 255
    return out


@pytest.fixture
def gtfine(tmp_path):
    rng = np.random.default_rng(0)
    written = {}
    for split, city, stem in FILES:
        ids = rng.integers(0, 34, (10, 17)).astype(np.uint8)
        ids[0, :] = np.arange(17)  # make sure many ids appear, with an unknown value and the plate's 255 (-1)
        ids[1, :] = np.r_[np.arange(17, 34), ]
        ids[2, :3] = (200, 255, 34)
        path = tmp_path / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
        write_png(str(path), ids)
        written[str(path)] = ids
    return tmp_path, written


def leftovers(root):
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.endswith(".tmp")]


def test_converts_with_the_official_table(gtfine, capsys):
    root, written = gtfine
    assert conv.main([str(root)]) == 0
    for src, ids in written.items():
        dst = src.replace("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png")
        out = np.asarray(Image.open(dst))
        assert Image.open(dst).mode == "L"
        np.testing.assert_array_equal(out, expected_train_ids(ids))
    assert "converted 3" in capsys.readouterr().out
    assert leftovers(root) == []


def test_existing_outputs_are_skipped_unless_overwrite(gtfine, capsys):
    root, written = gtfine
    src = sorted(written)[0]
    dst = src.replace("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png")
    sentinel = np.full((10, 17), 7, dtype=np.uint8)
    write_png(dst, sentinel)
    assert conv.main([str(root), "--nproc", "2"]) == 0
    out = capsys.readouterr().out
    assert "converted 2" in out and "skipped 1" in out and "--overwrite" in out
    np.testing.assert_array_equal(np.asarray(Image.open(dst)), sentinel)
    assert conv.main([str(root), "--overwrite"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(dst)), expected_train_ids(written[src]))
    assert leftovers(root) == []


def test_a_corrupt_input_is_named_and_the_others_still_convert(gtfine, capsys):
    root, written = gtfine
    bad = sorted(written)[1]
    with open(bad, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\nnot really")
    assert conv.main([str(root)]) == 1
    captured = capsys.readouterr()
    assert bad in captured.err and "FAILED 1" in captured.err
    for src in written:
        dst = src.replace("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png")
        assert os.path.exists(dst) == (src != bad)
    assert leftovers(root) == []


def test_a_failed_write_leaves_neither_output_nor_temp_file(gtfine, monkeypatch):
    root, written = gtfine
    src = sorted(written)[0]

    def disk_full(self, fp, *args, **kwargs):
        fp.write(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    status, _, message = conv.convert_one(src)
    assert status == "failed" and "No space left" in message
    assert not os.path.exists(src.replace("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png"))
    assert leftovers(root) == []


def test_missing_root_is_an_error(tmp_path, capsys):
    assert conv.main([str(tmp_path)]) == 2
    assert "gtFine" in capsys.readouterr().err


def test_runs_as_a_module(gtfine):
    root, _ = gtfine
    done = subprocess.run([sys.executable, "-m", "resnest_fast.training.data.convert_cityscapes", str(root)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "converted 3" in done.stdout
    assert "labelTrainIds" in done.stderr  # the tqdm bar
