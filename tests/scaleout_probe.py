"""Test-only Lightning callback for the DDP tests (tests/test_scaleout.py).

train.py instantiates it on every rank from `+callbacks.probe._target_=scaleout_probe.SeenIndices`
(tests/ on PYTHONPATH). It records the dataset indices that this rank's training loader actually
draws, epoch by epoch, by wrapping the sampler its batch sampler pulls from, and writes them with
the rank's view of the run to `<out_dir>/rank<global rank>.json` at the end of fit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class _Recording:
    """Iterates the wrapped sampler and appends every index to `seen`."""

    def __init__(self, sampler: Any, seen: list[list[int]]) -> None:
        self.sampler = sampler
        self.seen = seen

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[int]:
        draw: list[int] = []
        self.seen.append(draw)
        for index in self.sampler:
            draw.append(int(index))
            yield index


class SeenIndices(Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.seen: list[list[int]] = []
        self.info: dict[str, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loader = trainer.train_dataloader
        batch_sampler = loader.batch_sampler
        self.info = {
            "global_rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "sampler": type(loader.sampler).__name__,
            # DistributedSamplerWrapper keeps the sampler it shards in .dataset._sampler
            "inner_sampler": type(
                getattr(getattr(loader.sampler, "dataset", None), "_sampler", None)
            ).__name__,
            "n_train": len(loader.dataset),
            "targets": list(loader.dataset.targets),
            "default_root_dir": trainer.default_root_dir,
        }
        batch_sampler.sampler = _Recording(batch_sampler.sampler, self.seen)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {**self.info, "seen": self.seen, "global_step": trainer.global_step}
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
