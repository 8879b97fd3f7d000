"""Out of GPU memory during a training run: save what can be saved, then say what to change.

`explain_out_of_memory(cfg, trainer)` wraps `trainer.fit` / `trainer.test` in
`facediff.lightning.training.run`. When `torch.OutOfMemoryError` escapes them, Lightning has
already moved the model and optimizer to the CPU (its teardown after an exception), so:

- if memory ran out in a forward or backward pass or in validation (sample grids and eval
  metrics included), the weights, the optimizer and the EMA are those of the last completed
  step (after validation, the raw weights are swapped back in first): they are written to
  `<run>/checkpoints/oom-stepNNNNNNN.ckpt`, which resumes with `ckpt_path=...` (never over
  `last.ckpt`);
- if it ran out inside gradient clipping or `optimizer.step()`, the update may be half applied,
  so nothing is written and the message points at `last.ckpt`; after training ended (the
  final sample grids) the checkpoints are already written;
- then `TrainingOutOfMemoryError` is raised, naming the batch size, image size, model,
  precision, where memory ran out and the switches that use less.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, WeightAveraging
from omegaconf import DictConfig

from facediff.lightning.nonfinite import nonfinite_names

log = logging.getLogger(__name__)


class TrainingOutOfMemoryError(RuntimeError):
    """Training ran out of GPU memory; the message says what to change. `checkpoint` is the
    state saved on the way out, or None."""

    def __init__(self, message: str, checkpoint: Path | None = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


class RunPhase(Callback):
    """Remembers what the trainer was doing, so that an error can say where it happened and
    whether the module's state can be saved as it is: not between `on_before_optimizer_step`
    and the end of the batch (gradient clipping and the optimizer's update, maybe half applied),
    not after training (the module then holds the final EMA weights); during validation the
    module holds the EMA weights, swapped in by Lightning's weight averaging (whose callback
    runs before this one, which is appended last)."""

    def __init__(self) -> None:
        self.phase = "setup"

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.phase = "training step (forward and backward)"

    def on_before_optimizer_step(self, trainer: L.Trainer, *args: Any) -> None:
        self.phase = "optimizer update"

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.phase = "between training steps"

    def on_validation_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.phase = VALIDATION

    def on_validation_epoch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.phase = "between training steps"

    def on_train_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.phase = "the end of training (final sample grids)"

    def on_test_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.phase = "test"


VALIDATION = "validation (with the sample grids and eval metrics)"


def restore_raw_weights(trainer: L.Trainer, phase: RunPhase) -> None:
    """Swap the raw weights back into the module when validation was cut short (Lightning's
    weight averaging swaps them back only at the end of the validation epoch)."""
    if phase.phase != VALIDATION:
        return
    for cb in trainer.callbacks:
        if isinstance(cb, WeightAveraging) and cb._average_model is not None:
            cb._swap_models(trainer.lightning_module)


def save_state(trainer: L.Trainer, phase: RunPhase, out_dir: Path) -> tuple[Path | None, str]:
    """Write the run's state after an out-of-memory error when it is whole; returns the path
    (or None) and a sentence for the message."""
    module = trainer.lightning_module if trainer.strategy is not None else None
    if module is None or phase.phase == "setup":
        return None, "Nothing was trained yet, so nothing was saved."
    if trainer.state.fn != "fit":
        return None, "Training had finished; its checkpoints are in checkpoints/."
    if trainer.world_size > 1:  # saving needs every rank, and the others may be stuck
        return None, "Under DDP nothing was saved; resume from checkpoints/last.ckpt."
    if phase.phase == "optimizer update":
        return None, (
            "Memory ran out inside the optimizer update, which may be half applied, so this "
            "state was not saved; resume from checkpoints/last.ckpt."
        )
    if phase.phase.startswith("the end of training"):
        return None, "Training had finished; its checkpoints are in checkpoints/."
    restore_raw_weights(trainer, phase)
    if nonfinite_names(module):
        return None, "The weights are not finite, so they were not saved."
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    path = out_dir / "checkpoints" / f"oom-step{trainer.global_step:07d}.ckpt"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(path, weights_only=False)  # the full state: resumable
    except Exception as err:  # the message about memory matters more than this one
        log.exception("Could not save the state after running out of memory")
        return None, f"Saving the state failed too ({type(err).__name__}: {err})."
    return path, (
        f"The state at step {trainer.global_step} was saved; resume with ckpt_path={path} ."
    )


def memory_advice(cfg: DictConfig, precision: str, phase: str) -> str:
    """The settings that decide memory use, as they are now, and how to lower each."""
    data, model = cfg.data, cfg.model
    half = "" if str(precision).startswith(("16", "bf16")) else (
        f" trainer.precision=bf16-mixed (or 16-mixed on a GPU without bf16; now {precision}),"
    )  # fmt: skip
    checkpointing = (
        "" if model.get("grad_checkpoint") else " model.grad_checkpoint=true (recompute "
        "activations in backward: less memory, ~30% slower),"
    )  # fmt: skip
    advice = (
        f"Settings now: data.batch_size={data.batch_size}, data.image_size={data.image_size}, "
        f"model: base_channels={model.get('base_channels')} "
        f"channel_mult={list(model.get('channel_mult') or [])} "
        f"attn_resolutions={list(model.get('attn_resolutions') or [])}, "
        f"model.grad_checkpoint={str(bool(model.get('grad_checkpoint'))).lower()}, "
        f"trainer.precision={precision}, "
        f"trainer.accumulate_grad_batches={cfg.trainer.get('accumulate_grad_batches', 1)}. "
        f"To use less memory: data.batch_size={max(1, int(data.batch_size) // 2)} (with "
        "trainer.accumulate_grad_batches doubled to keep the effective batch),"
        f"{checkpointing}{half} a smaller data.image_size or model (model=unet_tiny), "
        "callbacks.ema.device=cpu."
    )
    if phase in (VALIDATION, "test") or phase.startswith("the end of training"):
        advice += (
            " Memory ran out during evaluation: also lower data.eval_batch_size, "
            "callbacks.sample_grid.n_per_class or callbacks.eval_metrics.n_per_class."
        )
    return advice


@contextmanager
def explain_out_of_memory(cfg: DictConfig, trainer: L.Trainer) -> Iterator[None]:
    """Turn `torch.OutOfMemoryError` from the body into `TrainingOutOfMemoryError` with advice,
    after saving the run's state when it is whole (module docstring)."""
    phase = RunPhase()
    trainer.callbacks.append(phase)
    try:
        yield
    except torch.OutOfMemoryError as err:
        saved, outcome = save_state(trainer, phase, Path(cfg.paths.output_dir))
        raise TrainingOutOfMemoryError(
            f"Out of GPU memory during {phase.phase} ({str(err).splitlines()[0][:200]}). "
            f"{outcome} {memory_advice(cfg, str(trainer.precision), phase.phase)}",
            checkpoint=saved,
        ) from err
    finally:
        trainer.callbacks.remove(phase)
