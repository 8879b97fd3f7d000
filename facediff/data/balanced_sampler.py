"""Class-balanced sampling that stays consistent across DDP ranks."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import WeightedRandomSampler


class EpochSeeded:
    """Mixin for a torch sampler with a `generator` attribute: the draws of epoch e come from a
    generator seeded with ``seed + e``, never from the global random stream, so an epoch's order
    is the same in a resumed run and on every DDP rank. Lightning calls ``set_epoch``; without
    any call (a plain loop) each pass advances the epoch by itself. Call `_seed_epochs` in
    ``__init__`` and list the mixin before the sampler class."""

    generator: torch.Generator | None

    def _seed_epochs(self, seed: int) -> None:
        self.seed = int(seed)
        self.epoch = 0
        self._auto_epoch = True

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._auto_epoch = False

    def __iter__(self) -> Iterator[int]:
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self._auto_epoch:
            self.epoch += 1
        return super().__iter__()  # type: ignore[misc]


class BalancedSampler(EpochSeeded, WeightedRandomSampler):
    """WeightedRandomSampler with weight 1/count(class), drawn with replacement.

    Draws come from a generator seeded with ``seed + epoch`` (`EpochSeeded`). Under DDP
    Lightning wraps this sampler in ``DistributedSamplerWrapper``, which materialises the full
    draw on every rank and shards it by position: identical seeding keeps the ranks' draws
    identical (so the shards are disjoint), and ``set_epoch`` (forwarded by the wrapper) gives
    every epoch fresh draws.
    """

    def __init__(self, labels: Sequence[int], num_samples: int | None = None, seed: int = 0):
        if len(labels) == 0:
            raise ValueError("Cannot build a balanced sampler over an empty training set.")
        counts = Counter(int(v) for v in labels)
        weights = torch.tensor([1.0 / counts[int(v)] for v in labels], dtype=torch.double)
        super().__init__(weights, num_samples or len(labels), replacement=True)
        self._seed_epochs(seed)
