"""InfiniteSampler: permutation after permutation, split over ranks, and fresh augmentations on every pass."""
import itertools
from functools import partial

import pytest
import torch

from resnest_fast.training.data import SyntheticDataset, build_pipeline, collate
from resnest_fast.training.data.samplers import InfiniteSampler


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_each_pass_is_a_new_permutation():
    pairs = take(InfiniteSampler(7, seed=1), 21)
    passes = [pairs[i * 7:(i + 1) * 7] for i in range(3)]
    for p, chunk in enumerate(passes):
        assert sorted(i for i, _ in chunk) == list(range(7)) and {d for _, d in chunk} == {p}
    assert len({tuple(i for i, _ in chunk) for chunk in passes}) == 3  # three different orders
    assert take(InfiniteSampler(7, seed=1), 21) == pairs
    assert take(InfiniteSampler(7, seed=2), 7) != pairs[:7]
    assert take(InfiniteSampler(4, shuffle=False), 6) == [(0, 0), (1, 0), (2, 0), (3, 0), (0, 1), (1, 1)]


def test_ranks_share_the_stream_and_start_resumes():
    whole = take(InfiniteSampler(5, seed=3, rank=0, world_size=1), 20)
    r0 = take(InfiniteSampler(5, seed=3, rank=0, world_size=2), 10)
    r1 = take(InfiniteSampler(5, seed=3, rank=1, world_size=2), 10)
    assert r0 == whole[0::2] and r1 == whole[1::2]
    assert take(InfiniteSampler(5, seed=3, rank=1, world_size=2, start=4), 6) == r1[4:10]
    with pytest.raises(ValueError):
        InfiniteSampler(5, rank=2, world_size=2)
    with pytest.raises(ValueError):
        InfiniteSampler(0)
    assert "world_size=2" in repr(InfiniteSampler(5, rank=1, world_size=2))


def test_revisited_samples_get_new_augmentations_whatever_the_workers():
    ds = SyntheticDataset(3, size=(48, 48), num_classes=4, seed=0,
                          pipeline=build_pipeline("ade20k", "train", crop_size=(24, 24)))
    collate_fn = partial(collate, size=(24, 24))

    def first_batches(num_workers):
        loader = torch.utils.data.DataLoader(ds, batch_size=3, sampler=InfiniteSampler(3, seed=4),
                                             collate_fn=collate_fn, num_workers=num_workers,
                                             persistent_workers=num_workers > 0)
        return list(itertools.islice(iter(loader), 2))

    serial, parallel = first_batches(0), first_batches(2)
    for s, p in zip(serial, parallel):
        assert torch.equal(s["img"], p["img"]) and torch.equal(s["gt_semantic_seg"], p["gt_semantic_seg"])
    # Batch 0 is pass 0 and batch 1 is pass 1 over the same 3 images: each image is augmented anew.
    first = dict(zip(serial[0]["img_path"], serial[0]["img"]))
    second = dict(zip(serial[1]["img_path"], serial[1]["img"]))
    assert first.keys() == second.keys() and len(first) == 3
    assert all(not torch.equal(first[k], second[k]) for k in first)
    assert torch.equal(ds[(2, 1)]["img"], ds[(2, 1)]["img"])
    assert not torch.equal(ds[(2, 0)]["img"], ds[(2, 1)]["img"])
