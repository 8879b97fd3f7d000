"""Checks of a FaceDataModule's configuration that need no disk: sizes, the demo settings, and
the class names decidable from the config alone."""

from __future__ import annotations

from typing import Any

from facediff.data.demo import DEMO_CLASSES
from facediff.data.utkface import ClassSelector

DEMO_KEYS = ("n_per_class", "size", "seed")
MAX_NEAR_DUPLICATES = 0.2  # RMS; different faces of UTKFace are >= 0.078 apart (near_duplicates)


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return value


def check_near_duplicates(max_rms: Any, cache_images: bool) -> float | None:
    """`near_duplicates`: null, or the RMS pixel difference in (0, MAX_NEAR_DUPLICATES]
    (facediff.data.near_duplicates) under which two files count as one photograph; it compares
    decoded pixels, so it needs the decoded-image cache."""
    if max_rms is None:
        return None
    if (
        isinstance(max_rms, bool)
        or not isinstance(max_rms, (int, float))
        or not 0 < max_rms <= MAX_NEAR_DUPLICATES
    ):
        raise ValueError(
            f"`near_duplicates` must be null or a number in (0, {MAX_NEAR_DUPLICATES}] (an RMS "
            f"pixel difference at 32 px; 0.06 finds re-saved copies of a photograph, and above "
            f"{MAX_NEAR_DUPLICATES} different faces would count as one), got {max_rms!r}."
        )
    if not cache_images:
        raise ValueError(
            "`near_duplicates` compares the decoded images, which cache_images=false does not "
            "keep. Fix: set data.cache_images=true, or data.near_duplicates=null to split "
            "without looking for near-identical files."
        )
    return float(max_rms)


def check_demo(demo: Any, layout: str) -> dict[str, int] | None:
    """The demo settings (a subset of n_per_class, size, seed; write_demo_dataset's defaults
    fill the rest), or None."""
    if demo is None:
        return None
    example = "demo={n_per_class: 300, size: 64, seed: 0}"
    if not isinstance(demo, dict) or set(demo) - set(DEMO_KEYS):
        raise ValueError(f"`demo` must be null or a mapping like {example}, got {demo!r}.")
    if layout != "folder":
        raise ValueError(
            f"The demo data uses the folder layout. Fix: set layout=folder with {example}."
        )
    return {key: int(value) for key, value in demo.items()}


def configured_class_names(
    layout: str, classes: Any, attribute: str, demo: dict[str, int] | None
) -> list[str] | None:
    """Class names decidable without touching the disk (None: list sub-folders later)."""
    if layout == "utkface":
        if classes is not None and not isinstance(classes, dict):
            raise ValueError(
                f"layout=utkface takes `classes` as a mapping of class name -> label value "
                f"(e.g. {{white: 0, black: 1}} for attribute=race), got {classes!r}."
            )
        return ClassSelector(attribute, classes).names
    if classes is not None and not isinstance(classes, list):
        raise ValueError(
            f"layout=folder takes `classes` as a list of sub-folder names or null, got {classes!r}."
        )
    if demo is not None:
        names = list(DEMO_CLASSES) if classes is None else [str(c) for c in classes]
        unknown = [name for name in names if name not in DEMO_CLASSES]
        if unknown:
            raise ValueError(
                f"Demo classes {unknown} do not exist. Fix: choose from {list(DEMO_CLASSES)}."
            )
        return names
    return None if classes is None else [str(c) for c in classes]
