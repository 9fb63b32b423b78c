"""mmseg's iteration-based training draws samples from an endless stream (mmengine's InfiniteSampler): one
permutation of the dataset after another, the ranks of a distributed run taking every world_size-th element.

This one yields ``(index, pass)`` pairs instead of bare indices. The datasets seed their augmentations with
(seed, pass, index), so a sample seen again in a later pass gets new augmentations, while the whole stream stays a
pure function of the seed: independent of the number of DataLoader workers, and correct with persistent workers
(which never see a ``set_epoch`` made in the main process).
"""

import itertools

import numpy as np
from torch.utils.data import Sampler


class InfiniteSampler(Sampler):
    """Endless ``(index, pass)`` pairs over a dataset of ``size`` samples.

    shuffle: each pass is a permutation drawn from (seed, pass); otherwise 0..size-1 in order.
    rank, world_size: this process's share of the stream (default: from torch.distributed when initialised,
    else the whole stream). start: skip that many of this rank's elements (resume at an iteration count x batch).
    """

    def __init__(self, size, shuffle=True, seed=0, rank=None, world_size=None, start=0):
        if size < 1:
            raise ValueError(f"cannot sample from an empty dataset (size={size})")
        if rank is None or world_size is None:
            import torch.distributed as dist

            initialised = dist.is_available() and dist.is_initialized()
            rank = dist.get_rank() if rank is None and initialised else (rank or 0)
            world_size = dist.get_world_size() if world_size is None and initialised else (world_size or 1)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.size = int(size)
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = int(start)

    def _stream(self):
        for draw in itertools.count():
            order = np.random.default_rng([self.seed, draw]).permutation(self.size) if self.shuffle else range(self.size)
            for index in order:
                yield int(index), draw

    def __iter__(self):
        first = self.rank + self.start * self.world_size
        return itertools.islice(self._stream(), first, None, self.world_size)

    def __repr__(self):
        return (
            f"{type(self).__name__}(size={self.size}, shuffle={self.shuffle}, seed={self.seed}, rank={self.rank}, "
            f"world_size={self.world_size})"
        )
