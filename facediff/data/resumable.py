"""A training DataLoader that resumes mid-epoch at the batch where it stopped.

Lightning restores its loop to the batch a checkpoint was saved at, but a plain DataLoader
starts every epoch from the beginning of a new random order, so a resumed run would see other
images, some twice and some never in that epoch. Here:

- the order of an epoch depends only on (seed, epoch): `SeededRandomSampler` draws its
  permutation from ``seed + epoch`` (the balanced sampler and Lightning's DistributedSampler
  under DDP already do), never from the global random stream;
- `ResumableDataLoader` counts the batches it has handed out in the current epoch and reports
  them through ``state_dict()``, which Lightning stores in every checkpoint (the loop's
  ``combined_loader`` state) and gives back through ``load_state_dict()`` on resume;
- the workers' base seed of an epoch is drawn from ``seed + epoch`` too, not from the global
  random stream, which a resumed run reaches at another point;
- on the first pass after a resume, if the sampler is at the saved epoch, the loader skips the
  batches already trained on, at the level of indices: no skipped image is loaded, and under
  DDP each rank skips within its own shard. If the checkpoint was saved at the end of an epoch
  (the sampler is at the next one), nothing is skipped.

Batches are counted when handed to Lightning, which fetches them one at a time when the loader
has a length (it always has here), so the count at a checkpoint is exactly the number of
batches the saved model has trained on in that epoch.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler

from facediff.data.balanced_sampler import EpochSeeded


class SeededRandomSampler(EpochSeeded, RandomSampler):
    """A RandomSampler (without replacement) whose permutation for epoch e is drawn from
    ``seed + e`` (`EpochSeeded`). Under DDP Lightning replaces this sampler, as any
    RandomSampler, with a DistributedSampler that is seeded the same way."""

    def __init__(self, data_source: Sized, seed: int = 0) -> None:
        super().__init__(data_source)
        self._seed_epochs(seed)


class _SkipFirst(Sampler[int]):
    """Wraps the loader's sampler inside its BatchSampler: drops the first `skip` indices of
    the next pass only. Its length is the full one, as Lightning counts the skipped batches as
    done (it continues its batch count from the restored position)."""

    def __init__(self, inner: Sampler[int]) -> None:
        self.inner = inner
        self.skip = 0

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.inner), skip, None)


class ResumableDataLoader(DataLoader):
    """A DataLoader with `state_dict`/`load_state_dict` for its position in the epoch.

    Takes the arguments of `DataLoader`, with a sampler (or shuffle=False): the order of an
    epoch must not depend on the global random stream. Lightning re-creates it with a
    distributed sampler under DDP (it records the constructor's arguments).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.batch_sampler is None:
            raise ValueError("ResumableDataLoader needs batches (batch_size must not be None).")
        self._skipper = _SkipFirst(self.batch_sampler.sampler)
        self.batch_sampler.sampler = self._skipper  # one wrapper, the BatchSampler's own field
        self._epoch: int | None = None  # the epoch of the current pass
        self._served = 0  # batches of that epoch trained on (skipped ones included)
        self._resume_at: dict[str, int] | None = None

    def _sampler_epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))

    def _seed(self) -> int:
        return int(getattr(self.sampler, "seed", 0))

    def __iter__(self) -> Iterator[Any]:
        # A generator: the body runs at the first next(), after Lightning has set the epoch.
        epoch, skip = self._sampler_epoch(), 0
        if self._resume_at is not None and self._resume_at["epoch"] == epoch:
            skip = min(self._resume_at["batches"], len(self))
        self._resume_at = None
        self._epoch, self._served = epoch, skip
        self._skipper.skip = skip * int(self.batch_sampler.batch_size)
        # DataLoader draws its workers' base seed from `generator` when a pass starts, from the
        # global stream if None: one draw that a resumed run would make at another moment.
        self.generator = torch.Generator().manual_seed(self._seed() + epoch)
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        epoch = self._sampler_epoch() if self._epoch is None else self._epoch
        return {"epoch": epoch, "batches": self._served}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume_at = {"epoch": int(state_dict["epoch"]), "batches": int(state_dict["batches"])}
