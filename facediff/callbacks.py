"""Training-time sample grids from the EMA weights: one row per class, fixed noise and seed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torchvision.utils import make_grid, save_image

from facediff.generator import Generator

log = logging.getLogger(__name__)


class SampleGrid(Callback):
    """Write (and log to W&B) a grid of samples per class every `every_n_epochs` epochs.

    Sampling happens right after the first validation batch, when Lightning's weight averaging
    has swapped the EMA weights in (whatever the order of the callbacks), and once more at the
    end of fit, when the module holds the final EMA weights. The noise is drawn from `seed`, so
    grids of different epochs show the same starting points.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        n_per_class: int = 8,
        sampler: str = "ddim",
        steps: int = 50,
        guidance: float = 3.0,
        eta: float = 0.0,
        seed: int = 0,
        dirname: str = "samples",
    ) -> None:
        if every_n_epochs < 1 or n_per_class < 1:
            raise ValueError("callbacks.sample_grid: every_n_epochs and n_per_class must be >= 1.")
        self.every_n_epochs = every_n_epochs
        self.n_per_class = n_per_class
        self.sampler_kwargs = {"sampler": sampler, "steps": steps, "guidance": guidance, "eta": eta}
        self.seed = seed
        self.dirname = dirname

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or batch_idx != 0 or dataloader_idx != 0:
            return
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every_n_epochs == 0:
            self._write(trainer, pl_module, f"epoch{epoch:04d}-step{trainer.global_step:07d}")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After WeightAveraging.on_train_end the module holds the final EMA weights.
        self._write(trainer, pl_module, "final")

    @rank_zero_only
    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, name: str) -> None:
        was_training = pl_module.training
        pl_module.eval()
        images = self.generate(pl_module)  # (K*n, 3, H, W) in [0, 1]
        pl_module.train(was_training)
        rows = images.split(self.n_per_class)  # K rows of n images
        out_dir = Path(trainer.default_root_dir) / self.dirname
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{name}.png"
        save_image(torch.cat(rows), path, nrow=self.n_per_class, padding=2)
        log.info("Wrote sample grid %s", path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(
                    key="samples",
                    images=[make_grid(row, nrow=self.n_per_class) for row in rows],
                    caption=[f"{c} ({name})" for c in pl_module.class_names],
                    step=trainer.global_step,
                )

    def generate(self, pl_module: L.LightningModule) -> Tensor:
        """n_per_class samples of every class, in class order, from fixed noise: (K*n,3,H,W)."""
        gen = Generator(
            pl_module.net,
            pl_module.schedule,
            pl_module.class_names,
            pl_module.hparams.image_size,
            device=pl_module.device,
        )
        images, _ = gen.sample(n_per_class=self.n_per_class, seed=self.seed, **self.sampler_kwargs)
        return images


class ValidateAtMaxSteps(Callback):
    """Stop through `trainer.should_stop` at `max_steps`, so that a last validation (EMA loss,
    sample grid) and `last.ckpt` happen at the final step.

    Lightning ends a run that reaches `max_steps` mid-epoch without validating, so its
    `last.ckpt` would be the one of the previous epoch and a resume would silently repeat steps.
    """

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True
