"""Reading facediff checkpoints safely, and checking one fits the run that wants to resume it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from facediff.models.registry import normalise_model_config
from facediff.untrusted import UnsafeValueError

# Written into every checkpoint by DiffusionModule.on_save_checkpoint, checked on every load.
CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, not facediff's, or from another model."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint without executing code from it (weights_only=True) and check its marker."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"Checkpoint {path} does not exist. Runs write theirs to "
            "<run folder>/checkpoints/last.ckpt (and best-*.ckpt); pass one of those."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unpickling failure means the same to the user
        raise CheckpointError(
            f"Could not read checkpoint {path}: {err}. Is it a Lightning checkpoint written by "
            "facediff's train.py, and complete (not truncated by an interrupted copy)?"
        ) from err
    meta = ckpt.get("facediff") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or "hyper_parameters" not in ckpt:
        raise CheckpointError(
            f"{path} is not a facediff checkpoint (no 'facediff' entry). Only checkpoints written "
            "by facediff's train.py can be resumed or sampled from."
        )
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {meta.get('format')}, this facediff reads format "
            f"{CHECKPOINT_FORMAT}. Use the facediff version that wrote it."
        )
    return ckpt


def check_resumable(path: str | Path, hparams: dict[str, Any]) -> None:
    """Raise a CheckpointError when `path` was trained with another model, schedule or classes.

    `hparams` are the LightningModule hyper-parameters of the run that wants to resume.
    """
    saved = dict(load_checkpoint(path)["hyper_parameters"])
    try:  # legacy `_target_` and `name` spellings of the same network compare equal
        saved["model"] = normalise_model_config(saved.get("model"))
        hparams = {**hparams, "model": normalise_model_config(hparams["model"])}
    except UnsafeValueError as err:
        raise CheckpointError(f"Cannot resume from {path}: {err}") from err
    for key in ("model", "diffusion", "class_names", "image_size"):
        if saved.get(key) != hparams.get(key):
            raise CheckpointError(
                f"Cannot resume from {path}: its {key} differs from this run's.\n"
                f"  checkpoint: {saved.get(key)}\n  this run:   {hparams.get(key)}\n"
                "Resume with the same config as the run that wrote it (its .hydra/config.yaml), "
                "or start a fresh run without ckpt_path."
            )
