"""resnest_fast.utils: the argument-pair rule and atomic writes, against what a caller can observe."""
import os

import numpy as np
import pytest

from resnest_fast.utils import atomic_write, distributed_world_size, int_pair


@pytest.mark.parametrize("value, expected", [(3, (3, 3)), ((2, 5), (2, 5)), ([0, 1], (0, 1)),
                                             (np.int64(4), (4, 4)), ((np.int32(1), 2), (1, 2))])
def test_int_pair_accepts_ints_and_pairs(value, expected):
    out = int_pair(value, "stride")
    assert out == expected and all(type(v) is int for v in out)


@pytest.mark.parametrize("value, error, match", [
    (True, TypeError, "stride must be an int or a pair"),
    ((1, 2.0), TypeError, "stride must be an int or a pair"),
    ("3", TypeError, "stride"),
    ((1, 2, 3), ValueError, "stride must be an int or a pair"),
    ((1, 0), ValueError, "stride must be >= 1"),
    (0, ValueError, "stride must be >= 1"),
])
def test_int_pair_names_the_argument(value, error, match):
    with pytest.raises(error, match=match):
        int_pair(value, "stride", 1)


def test_atomic_write_replaces_or_keeps(tmp_path):
    path = tmp_path / "out.bin"
    assert atomic_write(path, lambda f: f.write(b"first"))
    assert atomic_write(path, lambda f: f.write(b"second"))
    assert path.read_bytes() == b"second"
    assert not atomic_write(path, lambda f: f.write(b"third"), overwrite=False)
    assert path.read_bytes() == b"second"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"kept")

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_bytes() == b"kept" and os.listdir(tmp_path) == ["out.bin"]


def test_atomic_write_to_a_path_keeps_the_suffix_for_the_saver(tmp_path):
    seen = []

    def saver(tmp):
        seen.append(tmp)
        tmp.write_text("x")

    assert atomic_write(tmp_path / "model.onnx", saver, to_path=True)
    assert seen[0].suffix == ".onnx" and seen[0].name.startswith(".model.") and seen[0].parent == tmp_path
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]


def test_world_size_is_one_without_a_process_group():
    assert distributed_world_size() == 1
