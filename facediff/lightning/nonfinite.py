"""Skip optimizer steps whose loss or gradient norm is not finite; stop after K in a row.

`NonFiniteGuard` is a Lightning callback (`callbacks.nonfinite_guard` in conf/callbacks/):

- `on_before_backward` records whether the loss is finite (all losses of an accumulation window);
- `on_before_optimizer_step` runs after backward (and, under DDP, after the gradients were
  all-reduced; with a GradScaler after they were unscaled) and before gradient clipping. When the
  loss or the total gradient norm is not finite it sets every gradient of the optimizer to None:
  torch's optimizers leave a parameter without a gradient untouched (no weight update, no change
  to Adam's moments or step count), and clipping ignores it. The EMA callback asks
  `step_skipped(trainer)` and does not average that step either;
- the skip is counted and logged as `train/skipped_steps` (the run's total, kept in checkpoints),
  with a warning naming the step; after `max_consecutive` skipped steps in a row it raises
  `NonFiniteTrainingError` (train.py exits non-zero) with what to change;
- the gradient norm, computed here anyway, is logged as `train/grad_norm` (before clipping, the
  number to set the clip by; NaN or inf on a skipped step);
- `on_save_checkpoint` refuses to write a checkpoint whose raw or averaged weights are not finite,
  so `last.ckpt` is never replaced by NaN weights.

Under `16-mixed` the GradScaler already skips steps with inf/NaN gradients and lowers its scale;
that is normal in the first steps, so with a scaler a non-finite gradient norm from a finite loss
is left to it: the step is marked skipped (no EMA update) but neither counted nor a reason to
stop. A non-finite loss is counted under every precision. The global step and the learning-rate
schedule advance on a skipped step, as they do on a scaler skip.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, WeightAveraging
from torch import Tensor
from torch.optim import Optimizer

log = logging.getLogger(__name__)

KNOB = "callbacks.nonfinite_guard.max_consecutive"


class NonFiniteTrainingError(RuntimeError):
    """Training cannot go on: too many non-finite steps in a row, or non-finite weights."""


def optimizer_grads(optimizer: Optimizer) -> list[Tensor]:
    params = (p for group in optimizer.param_groups for p in group["params"])
    return [p.grad for p in params if p.grad is not None]


def drop_grads(optimizer: Optimizer) -> None:
    """Set every gradient of `optimizer` to None: its next `step()` changes nothing."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = None


def has_grad_scaler(trainer: L.Trainer) -> bool:
    """True under 16-mixed precision, whose GradScaler skips inf/NaN-gradient steps itself."""
    return getattr(trainer.precision_plugin, "scaler", None) is not None


def nonfinite_names(module: torch.nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers of `module` holding a NaN or inf."""
    tensors = [(n, t) for n, t in module.state_dict().items() if t.is_floating_point()]
    if not tensors:
        return []
    finite = torch.stack([torch.isfinite(t).all() for _, t in tensors]).tolist()
    return [name for (name, _), ok in zip(tensors, finite, strict=True) if not ok]


class NonFiniteGuard(Callback):
    """Skip and count optimizer steps with a non-finite loss or gradient norm (module docstring).

    Args:
        max_consecutive: stop training with `NonFiniteTrainingError` after this many skipped
            steps in a row (>= 1).
    """

    def __init__(self, max_consecutive: int = 10) -> None:
        if isinstance(max_consecutive, bool) or not isinstance(max_consecutive, int):
            raise ValueError(f"{KNOB} must be an integer >= 1, got {max_consecutive!r}.")
        if max_consecutive < 1:
            raise ValueError(f"{KNOB} must be >= 1, got {max_consecutive}.")
        self.max_consecutive = max_consecutive
        self.skipped_steps = 0  # counted skips over the whole run (restored on resume)
        self.consecutive = 0  # counted skips in a row
        self.skipped_last_step = False  # the latest optimizer step changed nothing
        self._loss_finite: Tensor | None = None  # all losses since the last optimizer step

    @property
    def state_key(self) -> str:
        return "NonFiniteGuard"

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
        self.consecutive = int(state_dict.get("consecutive", 0))

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor
    ) -> None:
        finite = torch.isfinite(loss.detach()).all()
        self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Optimizer
    ) -> None:
        grads = optimizer_grads(optimizer)
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        loss_finite = self._loss_finite if self._loss_finite is not None else torch.tensor(True)
        self._loss_finite = None
        flags = torch.stack([loss_finite.to(norm.device), torch.isfinite(norm)])
        loss_ok, grad_ok = flags.tolist()  # one device sync
        if trainer.world_size > 1:
            # The same decision on every rank, or their weights diverge. The gradients are
            # all-reduced already (a NaN on one rank is a NaN on all); the losses are not.
            loss_ok = not trainer.strategy.reduce_boolean_decision(not loss_ok, all=False)
        pl_module.log("train/grad_norm", norm, on_step=True)  # read every log_every_n_steps
        bad = not (loss_ok and grad_ok)
        self.skipped_last_step = bad
        if bad:
            drop_grads(optimizer)
        counted = bad and not (loss_ok and has_grad_scaler(trainer))
        if counted:
            self.skipped_steps += 1
            self.consecutive += 1
            log.warning(
                "Skipped optimizer step %d: %s (%d skipped in a row, %d in this run; training "
                "stops at %d in a row, %s).",
                trainer.global_step,
                "the loss is not finite" if not loss_ok else f"the gradient norm is {norm.item()}",
                self.consecutive,
                self.skipped_steps,
                self.max_consecutive,
                KNOB,
            )
        elif not bad:
            self.consecutive = 0
        pl_module.log("train/skipped_steps", float(self.skipped_steps), on_step=True)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteTrainingError(self._stop_message(trainer, optimizer))

    def _stop_message(self, trainer: L.Trainer, optimizer: Optimizer) -> str:
        ckpt = getattr(trainer.checkpoint_callback, "dirpath", None)
        resume = f" (ckpt_path={ckpt}/last.ckpt)" if ckpt else ""
        return (
            f"Training stopped at step {trainer.global_step}: the last {self.consecutive} "
            f"optimizer steps all had a non-finite loss or gradient norm ({KNOB}="
            f"{self.max_consecutive}). Each was skipped, so the weights, the optimizer state and "
            "the EMA are those of the last good step and finite. Usual causes and fixes: a "
            f"learning rate too high (optim.optimizer.lr, now {optimizer.param_groups[0]['lr']:.3g}"
            " after warm-up/decay), no gradient clipping (trainer.gradient_clip_val=1.0), fp16 "
            "overflow (trainer.precision=bf16-mixed or 32-true), or NaN/inf in the input data. "
            f"Resume from the last checkpoint{resume} after changing one of them."
        )

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Refuse to write non-finite weights, raw or averaged (the previous file stays)."""
        models = [("the model", pl_module)] + [
            (f"the {type(cb).__name__} average", cb._average_model)
            for cb in trainer.callbacks
            if isinstance(cb, WeightAveraging) and cb._average_model is not None
        ]
        for what, model in models:
            names = nonfinite_names(model)
            if names:
                raise NonFiniteTrainingError(
                    f"Refusing to write a checkpoint at step {trainer.global_step}: {what} has "
                    f"non-finite values in {names[:5]}{' ...' if len(names) > 5 else ''}; the "
                    "previous checkpoint is kept. Lower optim.optimizer.lr or set "
                    "trainer.gradient_clip_val, and resume from that checkpoint."
                )


def step_skipped(trainer: L.Trainer) -> bool:
    """Whether a `NonFiniteGuard` of `trainer` skipped its latest optimizer step (so that
    nothing changed and there is nothing new to average)."""
    return any(isinstance(cb, NonFiniteGuard) and cb.skipped_last_step for cb in trainer.callbacks)
