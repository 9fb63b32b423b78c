"""Checkpoint files: atomic writes (no partial file, even when writing fails), the `latest` pointer and its
fallback, keeping the last K, cleaning only our temporary files, RNG states that load with weights_only."""
import os
import random

import numpy as np
import pytest
import torch

from resnest_fast.training import checkpoints as ckpt


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def test_atomic_save_writes_complete_files_and_leaves_nothing_when_it_fails(tmp_path):
    path = tmp_path / "iter_1.pth"
    ckpt.atomic_save({"state_dict": {"w": torch.ones(3)}}, path)
    assert torch.load(path, weights_only=True)["state_dict"]["w"].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(RuntimeError, match="cannot pickle"):
        ckpt.atomic_save({"w": torch.zeros(3), "bad": _Unpicklable()}, path)
    # the failed write left the previous file intact and no temporary file
    assert os.listdir(tmp_path) == ["iter_1.pth"]
    assert torch.load(path, weights_only=True)["state_dict"]["w"].tolist() == [1.0, 1.0, 1.0]


def test_latest_pointer_and_its_fallback(tmp_path):
    assert ckpt.find_latest(tmp_path) is None
    assert ckpt.find_latest(tmp_path / "missing") is None
    for it in (2, 10, 4):
        ckpt.atomic_save({"it": it}, tmp_path / ckpt.checkpoint_name(it))
    assert [i for i, _ in ckpt.list_checkpoints(tmp_path)] == [2, 4, 10]  # by iteration, not by name
    assert ckpt.find_latest(tmp_path) == tmp_path / "iter_10.pth"  # no pointer: the highest iteration
    ckpt.write_latest(tmp_path, tmp_path / "iter_4.pth")
    assert (tmp_path / "latest").read_text() == "iter_4.pth\n"
    assert ckpt.find_latest(tmp_path) == tmp_path / "iter_4.pth"
    (tmp_path / "iter_4.pth").unlink()  # a pointer to a file that is gone is not followed
    assert ckpt.find_latest(tmp_path) == tmp_path / "iter_10.pth"
    (tmp_path / "latest").write_text("../../etc/passwd\n")  # nor one that is not a checkpoint name
    assert ckpt.find_latest(tmp_path) == tmp_path / "iter_10.pth"


def test_prune_keeps_the_newest_and_the_latest(tmp_path):
    for it in (1, 2, 3, 4, 5):
        ckpt.atomic_save({"it": it}, tmp_path / ckpt.checkpoint_name(it))
    (tmp_path / "notes.txt").write_text("mine")
    ckpt.write_latest(tmp_path, tmp_path / "iter_5.pth")
    removed = ckpt.prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in removed) == ["iter_1.pth", "iter_2.pth", "iter_3.pth"]
    assert sorted(os.listdir(tmp_path)) == ["iter_4.pth", "iter_5.pth", "latest", "notes.txt"]
    ckpt.write_latest(tmp_path, tmp_path / "iter_4.pth")  # e.g. resumed from an older checkpoint
    ckpt.atomic_save({"it": 6}, tmp_path / "iter_6.pth")
    ckpt.prune_checkpoints(tmp_path, keep=1)
    assert sorted(os.listdir(tmp_path)) == ["iter_4.pth", "iter_6.pth", "latest", "notes.txt"]
    assert ckpt.prune_checkpoints(tmp_path, keep=0) == []


def test_clean_temp_files_removes_only_ours(tmp_path):
    ours = [".iter_8.pth.0a1b2c3d4e5f.tmp", ".latest.00ff00ff00ff.tmp"]
    theirs = ["iter_8.pth", ".iter_8.pth.tmp", "x.tmp", ".bashrc", ".iter_8.pth.NOTHEX.tmp"]
    for name in ours + theirs:
        (tmp_path / name).write_text("x")
    assert sorted(p.name for p in ckpt.clean_temp_files(tmp_path)) == sorted(ours)
    assert sorted(os.listdir(tmp_path)) == sorted(theirs)


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    ckpt.atomic_save({"rng_states": [ckpt.rng_state()]}, tmp_path / "iter_1.pth")
    expected = (torch.rand(3), np.random.rand(3), np.random.standard_normal(), random.random())
    ckpt.set_rng_state(torch.load(tmp_path / "iter_1.pth", weights_only=True)["rng_states"][0])
    got = (torch.rand(3), np.random.rand(3), np.random.standard_normal(), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2:] == expected[2:]


def test_the_work_dir_lock_is_exclusive_and_goes_with_its_holder(tmp_path):
    """A second acquire (another open file: what a second process does) is refused naming the holder; release
    removes the lock file and the folders acquire made; a lock file left behind by a dead holder is taken over."""
    work = tmp_path / "a" / "w"
    lock = ckpt.WorkDirLock.acquire(work)
    assert lock.stale is None and (work / ckpt.LOCK).read_text().startswith(f"process {os.getpid()} on ")
    with pytest.raises(ValueError, match=rf"work dir '{work}' is in use by another training run \(process "
                       rf"{os.getpid()} on .*\): wait for it to end, or choose another --work-dir"):
        ckpt.WorkDirLock.acquire(work)
    lock.release()
    assert not (tmp_path / "a").exists()
    work.mkdir(parents=True)
    (work / ckpt.LOCK).write_text("process 1 on gone, started 2020-01-01 00:00:00")
    lock = ckpt.WorkDirLock.acquire(work)
    assert lock.stale == "process 1 on gone, started 2020-01-01 00:00:00"
    lock.release()
    assert work.is_dir() and not (work / ckpt.LOCK).exists()  # a folder that was there stays


def test_a_write_that_fails_says_why_in_one_line(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(ckpt.WriteError, match=rf"^cannot write {tmp_path}/f/x\.pth: {tmp_path}/f is a file, not a "
                       "folder$"):
        ckpt.atomic_save({"w": torch.zeros(2)}, tmp_path / "f" / "x.pth")
    no_space = OSError(28, "No space left on device")
    assert ckpt.describe_write_error(no_space, tmp_path / "x.pth", 3 * 2**20).startswith(
        f"no space left on {tmp_path}: 3.0 MiB needed, ")
    assert ckpt.describe_write_error(RuntimeError("cannot pickle"), tmp_path / "x.pth") is None
