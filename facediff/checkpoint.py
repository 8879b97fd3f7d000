"""Reading facediff checkpoints safely, and checking one fits the run that wants to resume it.

Formats: 1 named the UNet's blocks by level (``down.1.res.0``); 2 names them by resolution in
execution order (``enc.16x16_block0.res``) and stores the network's full config under
``facediff.model``. Format-1 files are upgraded in memory when read (`upgrade_checkpoint`), for
sampling, evaluation and resume alike.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from facediff.models.legacy import FORMAT1_UNET_DEFAULTS, upgrade_unet_state
from facediff.models.registry import model_key, normalise_model_config
from facediff.untrusted import UnsafeValueError

# Written into every checkpoint by DiffusionModule.on_save_checkpoint, checked on every load.
CHECKPOINT_FORMAT = 2
READABLE_FORMATS = (1, 2)
ZIP_MAGIC = b"PK\x03\x04"  # what torch.save (and so Lightning) writes


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, not facediff's, or from another model."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint without executing code from it (weights_only=True) and check its marker."""
    path = Path(path)
    if path.is_dir():
        found = sorted(str(p) for p in path.glob("**/*.ckpt"))[:5]
        hint = f"; found under it: {', '.join(found)}" if found else ""
        raise CheckpointError(
            f"Checkpoint {path} is a folder; pass a checkpoint file, e.g. "
            f"{path / 'checkpoints' / 'last.ckpt'}{hint}."
        )
    if not path.is_file():
        raise CheckpointError(
            f"Checkpoint {path} does not exist. Runs write theirs to "
            "<run folder>/checkpoints/last.ckpt (and best-*.ckpt); pass one of those."
        )
    with path.open("rb") as f:
        head = f.read(4)
    if head != ZIP_MAGIC:
        raise CheckpointError(
            f"{path} is not a checkpoint file: torch.save writes a zip archive, and this file "
            f"starts with {head!r}. Pass a run's <run folder>/checkpoints/last.ckpt."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unpickling failure means the same to the user
        raise CheckpointError(
            f"Could not read checkpoint {path} ({load_failure(err)}). facediff reads only "
            "checkpoints written by its train.py, complete (not truncated by an interrupted "
            "copy), and never loads a file in a way that could run code from it."
        ) from err
    meta = ckpt.get("facediff") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or "hyper_parameters" not in ckpt:
        raise CheckpointError(
            f"{path} is not a facediff checkpoint (no 'facediff' entry). Only checkpoints written "
            "by facediff's train.py can be resumed or sampled from."
        )
    if meta.get("format") not in READABLE_FORMATS:
        raise CheckpointError(
            f"{path} has checkpoint format {meta.get('format')}, this facediff reads formats "
            f"{READABLE_FORMATS}. Use the facediff version that wrote it."
        )
    try:
        return upgrade_checkpoint(ckpt)
    except (UnsafeValueError, TypeError) as err:
        raise CheckpointError(f"Refusing checkpoint {path}: {err}") from err


def load_failure(err: Exception) -> str:
    """torch.load's reason in one line, without its advice to retry with weights_only=False
    (which would run any code the file holds)."""
    text = str(err)
    if "Weights only load failed" in text:
        boilerplate = ("Weights only load failed", "Check the documentation", "WeightsUnpickler")
        parts = [p.strip() for p in re.split(r"\n\s*\n", text)]
        detail = [p for p in parts if p and not any(b in p for b in boilerplate)]
        return "it holds more than plain weights, refused unread" + (
            f": {detail[0]}" if detail else ""
        )
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def upgrade_checkpoint(ckpt: dict[str, Any]) -> dict[str, Any]:
    """Rename a format-1 checkpoint's UNet weights to format 2, in place; returns `ckpt`."""
    meta = ckpt["facediff"]
    if meta.get("format") != 1:
        return ckpt
    hp, model = ckpt["hyper_parameters"], ckpt["hyper_parameters"].get("model")
    if not isinstance(model, Mapping) or not isinstance(hp.get("image_size"), int):
        raise UnsafeValueError("its model config or image_size is missing or malformed.")
    if model_key(model) == "unet":  # format 1 had no other network
        # what the UNet took for a hyper-parameter its stored config left out
        hp["model"] = model = {**FORMAT1_UNET_DEFAULTS, **model}
        n_levels, size = len(model["channel_mult"]), hp["image_size"]
        for key in ("state_dict", "current_model_state"):
            if isinstance(ckpt.get(key), dict):
                ckpt[key] = upgrade_unet_state(ckpt[key], size, n_levels)
    meta["format"] = CHECKPOINT_FORMAT
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
    check_same_split(path, saved.get("data"), hparams.get("data"))


# The data settings that decide which image lands in which split (train/val/test). The root
# may move (another mount point) and loader settings may change; these may not.
SPLIT_KEYS = (
    "layout", "classes", "attribute", "split", "seed", "dedupe", "near_duplicates", "demo"
)  # fmt: skip


def check_same_split(path: str | Path, saved: Any, current: Any) -> None:
    """Refuse to resume when the data settings that decide the split differ: the resumed run
    would train on images the checkpoint's run held out for validation and test."""
    if not isinstance(saved, Mapping) or not isinstance(current, Mapping):
        raise CheckpointError(
            f"Cannot resume from {path}: it does not record its data config (data.split, "
            "data.seed, classes), so facediff cannot check that resuming keeps the test images "
            "out of training. Start a fresh run, or fine-tune from it in your own code."
        )
    for key in SPLIT_KEYS:
        if _plain(saved.get(key)) != _plain(current.get(key)):
            raise CheckpointError(
                f"Cannot resume from {path}: data.{key} differs from the checkpoint's, which "
                "would change the train/val/test split and move held-out images into "
                f"training.\n  checkpoint: data.{key}={_yaml(saved.get(key))}\n"
                f"  this run:   data.{key}={_yaml(current.get(key))}\n"
                f"Resume with data.{key} as the checkpoint has it (its run's .hydra/config.yaml), "
                "or start a fresh run without ckpt_path."
            )


def _yaml(value: Any) -> Any:
    """A value as a Hydra override spells it (null, not Python's None)."""
    return "null" if value is None else value


def _plain(value: Any) -> Any:
    """Compare configs by value: mappings as dicts, sequences as lists, numbers as floats."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value
