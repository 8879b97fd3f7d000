"""Resolve a dataset root + layout + class selection into a labelled list of files."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facediff.data.folder import describe_folder_classes, is_image_name, scan_folder
from facediff.data.utkface import (
    GENDER_NAMES,
    RACE_NAMES,
    UTKFACE_NAME_FORMAT,
    ClassSelector,
    parse_utkface_name,
    scan_utkface,
)

LAYOUTS = ("utkface", "folder")
UTKFACE_URL = "https://susanqq.github.io/UTKFace/"


def missing_root_message(root: str | os.PathLike[str]) -> str:
    """Explain what a dataset root must contain, where to get UTKFace, and the demo fallback."""
    return (
        f"Dataset root {str(root)!r} does not exist (resolved: {Path(root).resolve()}). "
        "Expected one of two layouts: (1) layout=utkface: a flat folder of UTKFace files named "
        f"{UTKFACE_NAME_FORMAT}; (2) layout=folder: root/<class>/*.jpg|*.png with one sub-folder "
        f"per class. UTKFace is published at {UTKFACE_URL}; download it yourself and point "
        "`root` at the extracted folder. To try the project without any download, run the "
        "built-in synthetic demo instead: `python train.py experiment=demo`."
    )


def check_root(root: str | os.PathLike[str]) -> Path:
    """Return ``root`` as a Path, or raise FileNotFoundError with guidance when it is missing."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(missing_root_message(root))
    return path


def detect_layout(root: Path) -> str:
    """Guess the layout: ``utkface`` when top-level files have UTKFace names, else ``folder``."""
    n_utk = n_files = 0
    has_dirs = False
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                has_dirs = True
            elif entry.is_file():
                n_files += 1
                n_utk += parse_utkface_name(entry.name) is not None
    if n_utk > 0 or (n_files > 0 and not has_dirs):
        return "utkface"
    return "folder"


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(
            f"Unknown data layout {layout!r}. Fix: set layout to 'utkface' (flat folder of "
            f"{UTKFACE_NAME_FORMAT} files) or 'folder' (root/<class>/*.jpg|*.png)."
        )
    return layout


@dataclass
class Listing:
    """The files a run will use, before decoding. ``relpaths`` are sorted, posix-style."""

    root: Path
    layout: str
    class_names: list[str]
    relpaths: list[str]
    labels: list[int]
    n_files: int
    malformed: list[str] = field(default_factory=list)


def _utk_overview(records: Sequence[Any]) -> str:
    races = Counter(r.race for r in records)
    genders = Counter(r.gender for r in records)
    race_text = ", ".join(f"{v} {RACE_NAMES[v]}: {races[v]}" for v in sorted(races))
    gender_text = ", ".join(f"{v} {GENDER_NAMES[v]}: {genders[v]}" for v in sorted(genders))
    ages = [r.age for r in records]
    age_text = f"ages {min(ages)}..{max(ages)}" if ages else "no ages"
    return f"race {{{race_text}}}; gender {{{gender_text}}}; {age_text}"


def _list_utkface(root: Path, classes: Any, attribute: str) -> Listing:
    selector = ClassSelector(attribute, classes)
    records, malformed = scan_utkface(root)
    if not records:
        hint = ""
        if any(is_image_name(p.name) for d in root.iterdir() if d.is_dir() for p in d.iterdir()):
            hint = " It has class sub-folders with images: did you mean layout=folder?"
        raise ValueError(
            f"No well-formed UTKFace file names in {root} ({len(malformed)} malformed names, "
            f"e.g. {malformed[:3]}).{hint} Fix: point `root` at the folder holding the "
            f"{UTKFACE_NAME_FORMAT} files, or use layout=folder."
        )
    relpaths: list[str] = []
    labels: list[int] = []
    for record in records:
        label = selector(record)
        if label is not None:
            relpaths.append(record.path.name)
            labels.append(label)
    counts = Counter(labels)
    empty = [i for i in range(len(selector.names)) if counts[i] == 0]
    if empty:
        per_class = ", ".join(
            f"{name} ({selector.describe(i)}): {counts[i]}" for i, name in enumerate(selector.names)
        )
        raise ValueError(
            f"UTKFace class(es) {[selector.names[i] for i in empty]} match no image in {root}. "
            f"Images per configured class: {per_class}. The data has: {_utk_overview(records)}. "
            "Fix: change `classes` so every class selects images that exist."
        )
    n_files = len(records) + len(malformed)
    return Listing(root, "utkface", selector.names, relpaths, labels, n_files, malformed)


def _list_folder(root: Path, classes: Any) -> Listing:
    if classes is not None and (isinstance(classes, Mapping) or not isinstance(classes, Sequence)):
        raise ValueError(
            f"layout=folder takes `classes` as a list of sub-folder names or null, got "
            f"{classes!r}. Sub-folders in {root}: {describe_folder_classes(root)}."
        )
    names, items = scan_folder(root, classes)
    relpaths = [path.relative_to(root).as_posix() for path, _ in items]
    return Listing(root, "folder", names, relpaths, [label for _, label in items], len(items))


def list_labelled_files(
    root: str | os.PathLike[str], layout: str, classes: Any = None, attribute: str = "race"
) -> Listing:
    """List and label the files selected by ``layout`` / ``classes`` / ``attribute``.

    Raises FileNotFoundError for a missing root and ValueError (listing what exists) when a
    configured class has no images.
    """
    path = check_root(root)
    if check_layout(layout) == "utkface":
        return _list_utkface(path, classes, attribute)
    return _list_folder(path, classes)
