"""Augmentation settings, the per-image transforms and the training collate.

Inputs are (3, L, L) uint8 tensors (L = load size). The evaluation transform (torchvision v2)
makes (3, S, S) float32 in [-1, 1] (S = image size). Training with any augmentation on leaves
each image as it is and augments the collated batch with fresh parameters per image
(facediff.data.batch_augment); with all of it off, training images go through the evaluation
transform.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms import v2

from facediff.data.batch_augment import TrainCollate

JITTER_KEYS = ("brightness", "contrast", "saturation", "hue")
AUGMENT_KEYS = ("hflip", "rotation", "crop_scale", "color_jitter")


def _number(name: str, value: Any, lo: float, hi: float, example: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ValueError(
            f"augment.{name}={value!r} is invalid: expected a number in [{lo:g}, {hi:g}]. "
            f"Fix: e.g. augment.{name}={example} (0 or null switches it off)."
        )
    return float(value)


@dataclass(frozen=True)
class Augment:
    """Augmentation settings; every field at its default switches that augmentation off."""

    hflip: float = 0.0
    rotation: float = 0.0
    crop_scale: tuple[float, float] | None = None
    color_jitter: tuple[float, float, float, float] | None = None

    @property
    def active(self) -> bool:
        """Whether any augmentation is on."""
        return self != Augment()

    @classmethod
    def from_config(cls, augment: Mapping[str, Any] | None) -> Augment:
        """Validate a config dict (keys hflip, rotation, crop_scale, color_jitter); None = off."""
        if augment is None:
            return cls()
        if not isinstance(augment, Mapping):
            raise ValueError(f"`augment` must be a mapping or null, got {augment!r}.")
        unknown = sorted(set(map(str, augment)) - set(AUGMENT_KEYS))
        if unknown:
            raise ValueError(
                f"Unknown augment key(s) {unknown}. Fix: use only {', '.join(AUGMENT_KEYS)}."
            )
        hflip = _number("hflip", augment.get("hflip") or 0.0, 0.0, 1.0, "0.5")
        rotation = _number("rotation", augment.get("rotation") or 0.0, 0.0, 180.0, "10")
        crop = augment.get("crop_scale")
        crop_scale = None
        if crop is not None:
            valid = (
                isinstance(crop, Sequence)
                and not isinstance(crop, str)
                and len(crop) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in crop)
                and 0 < crop[0] <= crop[1] <= 1
            )
            if not valid:
                raise ValueError(
                    f"augment.crop_scale={crop!r} is invalid: expected [lo, hi] area fractions "
                    "with 0 < lo <= hi <= 1. Fix: e.g. crop_scale=[0.8, 1.0], or null for a "
                    "plain resize."
                )
            crop_scale = (float(crop[0]), float(crop[1]))
        jitter = augment.get("color_jitter")
        color_jitter = None
        if jitter is not None:
            if not isinstance(jitter, Mapping):
                raise ValueError(
                    f"augment.color_jitter must be a mapping or null, got {jitter!r}. Fix: e.g. "
                    "color_jitter={brightness: 0.1, contrast: 0.1, saturation: 0.1, hue: 0.02}."
                )
            bad = sorted(set(map(str, jitter)) - set(JITTER_KEYS))
            if bad:
                raise ValueError(
                    f"Unknown augment.color_jitter key(s) {bad}. Fix: use only "
                    f"{', '.join(JITTER_KEYS)}."
                )
            b, c, s, h = (
                _number(
                    f"color_jitter.{key}",
                    jitter.get(key) or 0.0,
                    0.0,
                    0.5 if key == "hue" else 10.0,
                    "0.02" if key == "hue" else "0.1",
                )
                for key in JITTER_KEYS
            )
            color_jitter = (b, c, s, h) if any((b, c, s, h)) else None
        return cls(hflip, rotation, crop_scale, color_jitter)


def _to_model_range() -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.5] * 3)]


def build_train_transform(image_size: int, augment: Augment) -> v2.Transform:
    """Per training image: nothing when the batch is augmented (``build_train_collate``), the
    evaluation transform when every augmentation is off."""
    return v2.Identity() if augment.active else build_eval_transform(image_size)


def build_train_collate(image_size: int, augment: Augment) -> TrainCollate | None:
    """The training loader's collate (crop, flip, rotation and colour jitter per image of the
    batch); None, i.e. the default collate, when every augmentation is off."""
    if not augment.active:
        return None
    return TrainCollate(
        image_size, augment.crop_scale, augment.hflip, augment.rotation, augment.color_jitter
    )


def build_eval_transform(image_size: int) -> v2.Compose:
    """Deterministic: resize to ``image_size`` and scale to [-1, 1]."""
    return v2.Compose([v2.Resize((image_size, image_size), antialias=True), *_to_model_range()])
