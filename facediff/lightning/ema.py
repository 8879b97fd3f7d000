"""Exponential moving average of the weights, on top of Lightning's `WeightAveraging`.

Lightning's callback already does the hard parts: the checkpoint's `state_dict` holds the EMA
weights and `current_model_state` the raw ones, resume restores both, and validation runs on the
EMA weights. This subclass adds what the original recipe needs:
- a start step: before it the average simply tracks the raw weights (the original copied the
  model for its first 2,000 steps), and an optional warm-up of the decay, min(decay, (1+n)/(10+n));
- a fast update: one multi-tensor `torch._foreach_lerp_` over all parameters instead of a Python
  loop per tensor;
- picklable state only (no closures), so `strategy=ddp_spawn` works;
- no update after a step that `NonFiniteGuard` skipped (facediff.lightning.nonfinite): the raw
  weights did not change, and the step does not count in the decay schedule.

The update counter is AveragedModel's `n_averaged` buffer, which is checkpointed, so the decay
schedule continues exactly on resume.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch import Tensor

from facediff.lightning.nonfinite import step_skipped


class EMADecay:
    """`multi_avg_fn` for `torch.optim.swa_utils.AveragedModel`: EMA with start step and warm-up."""

    def __init__(self, decay: float = 0.995, start_step: int = 0, warmup: bool = False) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"callbacks.ema.decay must be in [0, 1), got {decay}.")
        if start_step < 0:
            raise ValueError(f"callbacks.ema.start_step must be >= 0, got {start_step}.")
        self.decay = decay
        self.start_step = start_step
        self.warmup = warmup

    def decay_at(self, num_updates: int) -> float:
        """Decay used for update number `num_updates` (0-based); 0 means copy the raw weights."""
        if num_updates < self.start_step:
            return 0.0
        if self.warmup:
            n = num_updates - self.start_step
            return min(self.decay, (1 + n) / (10 + n))
        return self.decay

    def __call__(self, ema: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        weight = 1.0 - self.decay_at(int(num_averaged))
        if weight == 1.0:
            torch._foreach_copy_(ema, current)
        else:
            torch._foreach_lerp_(ema, current, weight)


class EMA(WeightAveraging):
    """EMA of all parameters, updated after every optimizer step.

    Args:
        decay: EMA decay per step (the original used 0.995).
        start_step: optimizer steps during which the EMA copies the raw weights (original: 2,000).
        warmup: ramp the decay up as min(decay, (1+n)/(10+n)) after the start step.
        device: where to keep the average (default: the model's device; "cpu" saves GPU memory).
    """

    def __init__(
        self,
        decay: float = 0.995,
        start_step: int = 0,
        warmup: bool = False,
        device: str | None = None,
    ) -> None:
        super().__init__(
            device=device, use_buffers=True, multi_avg_fn=EMADecay(decay, start_step, warmup)
        )

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not step_skipped(trainer):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
