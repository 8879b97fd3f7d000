"""Loss curves in every run folder, so a run can be reviewed without W&B.

`LossCurves` keeps the training loss of every step and, at every validation, `val/loss` and the
per-timestep validation losses `val_t/loss_tNNNN` that the LightningModule logs. After each
validation and at the end of fit it rewrites `<run>/loss_curves.png` (left: training loss per
step with a moving average, and validation loss; right: validation loss against the timestep t,
one line per validation, darker = later) and `<run>/loss_curves.json` (the same numbers), and
logs the training speed since the previous validation (steps/s, images/s) to the run's log, so
a recipe's wall time on another machine can be read off its log.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import lightning as L
import matplotlib
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt

log = logging.getLogger(__name__)
VAL_T = re.compile(r"^val_t/loss_t(\d+)$")


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` values, same length as `values`."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_loss_curves(history: dict[str, Any], path: Path) -> None:
    """Draw the two panels described in the module docstring into `path`."""
    fig, (ax_train, ax_t) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps, losses = history["train_steps"], history["train_loss"]
    if steps:
        ax_train.plot(steps, losses, color="0.75", lw=0.6, label="train/loss (per step)")
        window = len(losses) // 50
        if window > 1:  # a short run has too few points to smooth: its raw curve says it all
            smooth = moving_average(losses, window)
            ax_train.plot(steps, smooth, color="C0", label=f"mean of {window}")
    val = history["val"]
    if val:
        ax_train.plot([v["step"] for v in val], [v["loss"] for v in val], "o-", color="C3",
                      label="val/loss (EMA weights)")  # fmt: skip
    ax_train.set(xlabel="training step", ylabel="loss", yscale="log", title="Training")
    ax_train.legend(fontsize=8)
    cmap = plt.get_cmap("viridis")
    for i, v in enumerate(val):
        ts = sorted(int(t) for t in v["per_t"])
        colour = cmap(0.15 + 0.75 * i / max(1, len(val) - 1))
        ax_t.plot(ts, [v["per_t"][str(t)] for t in ts], "o-", ms=3, color=colour,
                  label=f"step {v['step']}")  # fmt: skip
    # the training objective at each t, its weighting included (min-SNR weights make the
    # noisiest timesteps' values tiny by design)
    ax_t.set(xlabel="timestep t", ylabel="validation loss (weighted as in training)",
             yscale="log", title="Validation loss per timestep")  # fmt: skip
    if val:
        ax_t.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class LossCurves(Callback):
    """Record training and validation losses; write loss_curves.png/json into the run folder."""

    def __init__(self, filename: str = "loss_curves") -> None:
        self.filename = filename
        self._pending: list[tuple[int, torch.Tensor]] = []  # (step, detached loss): no sync
        self.history: dict[str, Any] = {"train_steps": [], "train_loss": [], "val": []}
        self._since: tuple[float, int, int] | None = None  # (time, step, images) at last report
        self._images = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._pending.append((trainer.global_step, loss.detach()))
        if isinstance(batch, (list, tuple)) and isinstance(batch[0], torch.Tensor):
            self._images += batch[0].shape[0] * trainer.world_size
        if self._since is None:  # the first step (compilation, warm-up) is not timed
            self._since = (time.perf_counter(), trainer.global_step, self._images)

    def _speed(self, step: int) -> dict[str, float] | None:
        """Steps/s and images/s since the last report (training and validation included)."""
        if self._since is None or step <= self._since[1]:
            return None
        now, (then, step0, images0) = time.perf_counter(), self._since
        self._since = (now, step, self._images)
        seconds = now - then
        return {"steps_per_sec": (step - step0) / seconds,
                "images_per_sec": (self._images - images0) / seconds}  # fmt: skip

    def _flush(self) -> None:
        if self._pending:
            values = torch.stack([loss.float() for _, loss in self._pending]).cpu().tolist()
            self.history["train_steps"] += [step for step, _ in self._pending]
            self.history["train_loss"] += values
            self._pending = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._flush()
        metrics = trainer.callback_metrics
        per_t = {
            str(int(m.group(1))): float(v)
            for k, v in metrics.items()
            if (m := VAL_T.match(k)) is not None
        }
        speed = self._speed(trainer.global_step)
        if "val/loss" in metrics:
            loss = float(metrics["val/loss"])
            self.history["val"].append(
                {"step": trainer.global_step, "loss": loss, "per_t": per_t, **(speed or {})}
            )
            if speed is not None and trainer.is_global_zero:  # one line, not one per rank
                log.info("step %d: val/loss %.4f; %.2f steps/s, %.1f images/s since the last "
                         "validation (validation included)", trainer.global_step, loss,
                         speed["steps_per_sec"], speed["images_per_sec"])  # fmt: skip
        self._write(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush()
        self._write(trainer)

    def state_dict(self) -> dict[str, Any]:
        self._flush()
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = state_dict["history"]

    @rank_zero_only
    def _write(self, trainer: L.Trainer) -> None:
        out = Path(trainer.default_root_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{self.filename}.json").write_text(json.dumps(self.history) + "\n")
        plot_loss_curves(self.history, out / f"{self.filename}.png")
