"""Resume: which checkpoint `ckpt_path` means, and the state Lightning does not restore.

Run folders are stable: `outputs/<task_name>/<run_name>` (conf/train.yaml; `run_name` defaults
to the start time), so a resumed or requeued job that is given the same `run_name` works in the
same folder, where Lightning's `default_root_dir` and the checkpoints are.

`ckpt_path` (`resolve_ckpt_path`):
- `null`: a fresh run. Refused when the run folder already holds a checkpoint, since the new
  run would overwrite it (pass `ckpt_path=last` to resume it, or another `run_name`).
- `last`: the newest of `<run>/checkpoints/last*.ckpt` (ModelCheckpoint's and the preemption
  checkpoint) and `<run>/hpc_ckpt_*.ckpt` (Lightning's SLURM requeue checkpoint). With none
  there yet, the run starts fresh with a warning, as Lightning does, so that one command line
  serves a job's first start and every requeue.
- a path: that checkpoint (its run state continues in this run's folder).

`RNGState` keeps the global random streams (torch CPU and CUDA, NumPy, Python) in every
checkpoint and puts them back when training starts again. With the data order restored too
(`facediff.data.resumable`), a resumed run draws the same labels dropped, timesteps, noise and
augmentations (with `data.num_workers=0`) as an uninterrupted one: its losses match.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)

LAST_PATTERN = "last*.ckpt"  # ModelCheckpoint's last.ckpt (and last-vN.ckpt) and ours
HPC_PATTERN = "hpc_ckpt_*.ckpt"  # Lightning's SLURM auto-requeue checkpoints, in default_root_dir


class ResumeError(ValueError):
    """`ckpt_path` cannot be honoured; the message names the fix."""


def resumable_checkpoints(run_dir: str | Path) -> list[Path]:
    """Every checkpoint `ckpt_path=last` may pick in `run_dir`, newest (by mtime) first."""
    run_dir = Path(run_dir)
    found = [*(run_dir / "checkpoints").glob(LAST_PATTERN), *run_dir.glob(HPC_PATTERN)]
    return sorted((p for p in found if p.is_file()), key=lambda p: p.stat().st_mtime, reverse=True)


def resolve_ckpt_path(ckpt_path: str | None, run_dir: str | Path) -> str | None:
    """The checkpoint file a run in `run_dir` resumes from (None: start fresh); see above."""
    run_dir = Path(run_dir)
    existing = resumable_checkpoints(run_dir)
    if ckpt_path is None:
        if existing:
            raise ResumeError(
                f"The run folder {run_dir} already holds {existing[0].name}: a fresh run there "
                "would overwrite it. Resume it with ckpt_path=last, or start a new run with "
                "another run_name."
            )
        return None
    if str(ckpt_path) == "last":
        if not existing:
            log.warning(
                "ckpt_path=last: no checkpoint in %s yet (checkpoints/%s or %s), so this is a "
                "fresh run. To resume an earlier run, give its run_name (its folder "
                "outputs/<task_name>/<run_name>).",
                run_dir,
                LAST_PATTERN,
                HPC_PATTERN,
            )
            return None
        log.info("ckpt_path=last: resuming from %s", existing[0])
        return str(existing[0])
    if str(ckpt_path) in ("best", "hpc", "registry"):
        raise ResumeError(
            f"ckpt_path={ckpt_path} is not supported by train.py: use ckpt_path=last (the "
            "newest checkpoint of this run folder) or the path of a checkpoint file."
        )
    return str(ckpt_path)


# --------------------------------------------------------------------------- RNG streams
def rng_state() -> dict[str, Any]:
    """The global random states, as plain tensors/lists (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [str(kind), keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned (CUDA only when the device count matches)."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.warning(
                "Not restoring the CUDA random state: saved for %d GPUs, this run has %d.",
                len(cuda),
                torch.cuda.device_count(),
            )


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, tuple) else value


class RNGState(Callback):
    """Saves the global random states in every checkpoint; restores them when a resumed run's
    training loop starts (after the sanity check, right before the next batch is drawn)."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return rng_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is not None:
            set_rng_state(self._pending)
            self._pending = None
