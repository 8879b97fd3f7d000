"""The LightningModule: thin glue between the UNet, the diffusion objective and the Trainer."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import lightning as L
import torch
from torch import Tensor

from facediff.checkpoint import CHECKPOINT_FORMAT, upgrade_checkpoint
from facediff.diffusion.objective import build_diffusion, diffusion_loss, drop_labels
from facediff.lightning.optim import (
    clip_gradients,
    parameter_groups,
    resolve_fused,
    schedule_change,
    warmup_cosine,
)
from facediff.models.registry import build_model, model_record

log = logging.getLogger(__name__)

OptimizerFactory = Callable[[Iterable[Any]], torch.optim.Optimizer]


class DiffusionModule(L.LightningModule):
    """Class-conditional DDPM training.

    All arguments but `optimizer` are plain containers (they are saved into every checkpoint,
    which is then enough to rebuild the model for sampling). The `module` knobs (p_uncond to
    compile_mode) have their defaults in conf/train.yaml's `module` node only:
        model: the network's config, `{name: <key of facediff.models.registry.MODELS>, ...}`
            (see conf/model/); the network is built through the registry, never by importing
            a name, so `load_from_checkpoint` on a crafted file cannot call code.
        diffusion: the schedule (`NoiseSchedule`) and objective (`Objective`: prediction,
            min_snr_gamma) settings, as in conf/diffusion/.
        optim: the optimizer config as composed (kept as a record) and `scheduler` (warm-up
            and cosine; plain numbers, used).
        class_names: the names of the conditioning classes, in label order.
        image_size: the side of the square training images.
        p_uncond: per-sample probability of dropping the label (classifier-free guidance).
        val_timesteps: number of timesteps of the fixed validation grid.
        val_seed: seed of the fixed validation noise.
        data: the run's data config (unused in training; evaluate.py rebuilds the data from it,
            so that it scores the model against the test split the model never saw).
        channels_last: keep the network's weights and the training batches in channels_last
            memory format (speed only; the checkpoint's weights load either way). "auto":
            contiguous until train.py decides once the Trainer knows its device and precision
            (`facediff.lightning.training.auto_channels_last`) and calls `set_memory_format`.
        compile: `torch.compile` the network's forward for the training step only (validation
            and sampling run it eager; state_dict keys stay those of the plain network: no
            `_orig_mod.` prefix reaches checkpoints or the EMA). "auto": train.py decides once
            the Trainer knows its devices (`facediff.lightning.training.auto_compile`) and calls
            `compile_training_forward`.
        compile_mode: torch.compile's mode when `compile` is on (None: its default;
            "reduce-overhead" adds CUDA graphs, which cut the host's per-operator cost on a GPU).
        optimizer: params -> optimizer, built by train.py from the composed config (conf/).
            Not a hyper-parameter: it is never saved, so a module rebuilt from a checkpoint's
            stored hparams has none and cannot train until one is given.
    """

    def __init__(
        self,
        model: dict[str, Any],
        diffusion: dict[str, Any],
        optim: dict[str, Any],
        class_names: list[str],
        image_size: int,
        *,
        p_uncond: float,
        val_timesteps: int,
        val_seed: int,
        channels_last: bool | str,
        compile: bool | str,
        compile_mode: str | None,
        data: dict[str, Any] | None = None,
        optimizer: OptimizerFactory | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= p_uncond < 1.0:
            raise ValueError(f"module.p_uncond must be in [0, 1), got {p_uncond}.")
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer_factory = optimizer
        self.class_names = list(class_names)
        self.net = build_model(model, image_size=image_size, num_classes=len(class_names))
        self.set_memory_format(channels_last is True)
        self.schedule_steps: int | None = None  # the LR schedule's total steps, once built
        self.resumed_schedule: tuple[int, int] | None = None  # (step, total) of a resumed run
        # Only the training step's forward is compiled: validation (eval mode, its own batch) and
        # the sampler (no grad, the sampler's batch) would each compile graphs of their own (one
        # compiled sample grid took 124 s against 18 s eager, BENCHMARKS.md run 19), so they run
        # the plain network. A compiled *function* is no submodule: the state_dict, the EMA copy
        # and checkpoints never see `_orig_mod.` keys.
        self.train_forward: Any = None
        if compile is True:
            self.compile_training_forward(compile_mode)
        self.schedule, self.objective = build_diffusion(diffusion)
        T = self.schedule.num_steps
        steps = torch.linspace(0, T - 1, max(1, min(val_timesteps, T))).round().long()
        self.val_t = steps.tolist()

    def set_memory_format(self, channels_last: bool) -> None:
        """Keep the network's weights, and the training batches, in channels_last or not."""
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)

    def compile_training_forward(self, mode: str | None) -> None:
        """Run the training step's forward through `torch.compile(mode=mode)` from now on."""
        self.train_forward = torch.compile(self.net.forward, mode=mode)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x0, y = batch  # (B,3,H,W) in [-1, 1], (B,)
        x0 = x0.contiguous(memory_format=self.memory_format)
        y = drop_labels(y, self.hparams.p_uncond, null_id=self.num_classes)
        t = torch.randint(0, self.schedule.num_steps, (x0.shape[0],), device=self.device)
        net = self.train_forward or self.net
        loss = diffusion_loss(net, self.schedule, self.objective, x0, y, t, torch.randn_like(x0))
        loss = loss.mean()
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Loss at a fixed grid of timesteps with fixed noise, so epochs are comparable."""
        self.fixed_grid_loss(batch, batch_idx, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """The validation loss on the test split, logged as `test/loss` and `test_t/*`."""
        self.fixed_grid_loss(batch, batch_idx, "test")

    def fixed_grid_loss(self, batch: tuple[Tensor, Tensor], batch_idx: int, split: str) -> None:
        """Log `<split>/loss` and `<split>_t/loss_tNNNN`: the loss at the fixed timestep grid."""
        x0, y = batch
        gen = torch.Generator().manual_seed(self.hparams.val_seed + batch_idx)
        losses = []
        for t_val in self.val_t:
            eps = torch.randn(x0.shape, generator=gen).to(x0)
            t = torch.full((x0.shape[0],), t_val, device=self.device, dtype=torch.long)
            loss_t = diffusion_loss(self.net, self.schedule, self.objective, x0, y, t, eps).mean()
            self.log(f"{split}_t/loss_t{t_val:04d}", loss_t, on_epoch=True, sync_dist=True)
            losses.append(loss_t)
        self.log(f"{split}/loss", torch.stack(losses).mean(), prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        if self.optimizer_factory is None:
            raise RuntimeError(
                "This DiffusionModule has no optimizer: modules rebuilt from a checkpoint's "
                "stored hyper-parameters never build one from them (a checkpoint must not choose "
                "code). Train with train.py (ckpt_path=... to resume), or pass optimizer=."
            )
        # Norms, biases and embeddings are never weight-decayed (see parameter_groups); with
        # weight_decay 0 (the default recipe) one group, so the LR is logged as lr-AdamW.
        wd = getattr(self.optimizer_factory, "keywords", {}).get("weight_decay")
        params = self.parameters() if wd == 0 else parameter_groups(self.net)
        optimizer = resolve_fused(self.optimizer_factory, self.trainer, self.device.type)(params)
        sched = self.hparams.optim["scheduler"]
        lr_lambda = partial(
            warmup_cosine,
            warmup_steps=sched["warmup_steps"],
            total_steps=int(self.trainer.estimated_stepping_batches),
            min_lr_ratio=sched["min_lr_ratio"],
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
        self.schedule_steps = lr_lambda.keywords["total_steps"]  # saved with every checkpoint
        if self.resumed_schedule is not None:  # (step, total steps) of the checkpoint's run
            step, saved_total = self.resumed_schedule
            change = schedule_change(step, saved_total, self.schedule_steps,
                                     sched["warmup_steps"], sched["min_lr_ratio"],
                                     optimizer.defaults["lr"])  # fmt: skip
            if change:
                log.warning(change)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)  # fused in bf16

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A marker so that sampling and resume can tell a facediff checkpoint from any other,
        # and the network's full config (e.g. UNetConfig), which sampling rebuilds it from.
        checkpoint["facediff"] = {"format": CHECKPOINT_FORMAT, "class_names": self.class_names}
        if self.schedule_steps is not None:
            checkpoint["facediff"]["schedule_steps"] = self.schedule_steps
        record = model_record(self.net)
        if record is not None:
            checkpoint["facediff"]["model"] = record

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Resume and load_from_checkpoint of a format-1 file: rename its UNet weights first.
        if isinstance(checkpoint.get("facediff"), dict):
            upgrade_checkpoint(checkpoint)
            saved_total = checkpoint["facediff"].get("schedule_steps")
            if isinstance(saved_total, int) and isinstance(checkpoint.get("global_step"), int):
                self.resumed_schedule = (checkpoint["global_step"], saved_total)
