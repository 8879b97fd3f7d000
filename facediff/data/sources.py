"""Resolve a dataset root + layout + class selection into a labelled list of files."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facediff.data.entries import scan_dir
from facediff.data.folder import describe_folder_classes, is_image_name, scan_folder_entries
from facediff.data.utkface import (
    GENDER_NAMES,
    RACE_NAMES,
    UTKFACE_NAME_FORMAT,
    ClassSelector,
    parse_utkface_name,
    scan_utkface_entries,
)

log = logging.getLogger("facediff.data")
_warned: set[tuple[str, ...]] = set()  # each root's skipped entries are reported once

LAYOUTS = ("utkface", "folder")
UTKFACE_URL = "https://susanqq.github.io/UTKFace/"


def missing_root_message(root: str | os.PathLike[str], layout: str | None = None) -> str:
    """Explain what a dataset root must contain (for `layout`, or both layouts when None),
    where to get UTKFace, and the demo fallback."""
    utkface = (
        f"layout=utkface (data=utkface): a flat folder of UTKFace files named "
        f"{UTKFACE_NAME_FORMAT}, published at {UTKFACE_URL} (download it yourself and point "
        "data.root at the extracted folder)"
    )
    folder = "layout=folder (data=folder): root/<class>/*.jpg|*.png, one sub-folder per class"
    expected = {"utkface": utkface, "folder": folder}.get(
        layout or "", f"one of two layouts: (1) {utkface}; (2) {folder}"
    )
    return (
        f"Dataset root {str(root)!r} does not exist (resolved: {Path(root).resolve()}). "
        f"Expected {expected}. To try the project without any download, run the "
        "built-in synthetic demo instead: `python train.py experiment=demo`."
    )


def check_root(root: str | os.PathLike[str], layout: str | None = None) -> Path:
    """Return ``root`` as a Path, or raise FileNotFoundError with guidance when it is missing."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(missing_root_message(root, layout))
    return path


def detect_layout(root: Path) -> str:
    """Guess the layout: ``utkface`` when top-level files have UTKFace names, else ``folder``."""
    scan = scan_dir(root)
    n_files = len(scan.files)
    n_utk = sum(parse_utkface_name(name) is not None for name in scan.files)
    has_dirs = bool(scan.dirs)
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
    skipped: list[str] = field(default_factory=list)  # "name: reason" (facediff.data.entries)


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
    records, malformed, skipped = scan_utkface_entries(root)
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
    n_files = len(records) + len(malformed) + len(skipped)
    return Listing(root, "utkface", selector.names, relpaths, labels, n_files, malformed, skipped)


def _list_folder(root: Path, classes: Any) -> Listing:
    if classes is not None and (isinstance(classes, Mapping) or not isinstance(classes, Sequence)):
        raise ValueError(
            f"layout=folder takes `classes` as a list of sub-folder names or null, got "
            f"{classes!r}. Sub-folders in {root}: {describe_folder_classes(root)}."
        )
    scan = scan_folder_entries(root, classes)
    relpaths = [path.relative_to(root).as_posix() for path, _ in scan.items]
    labels = [label for _, label in scan.items]
    n_files = len(scan.items) + len(scan.skipped)
    return Listing(root, "folder", scan.names, relpaths, labels, n_files, skipped=scan.skipped)


def warn_skipped(listing: Listing) -> None:
    """One warning for the entries the listing skipped (symlink loops, non-UTF-8 names), once
    per process for the same root and entries (setup lists the data more than once)."""
    seen = (str(listing.root), *listing.skipped)
    if listing.skipped and seen not in _warned:
        _warned.add(seen)
        log.warning(
            "Skipped %d unusable entr%s in %s, e.g. %s. (python -m facediff.data ROOT lists "
            "them all.)",
            len(listing.skipped),
            "y" if len(listing.skipped) == 1 else "ies",
            listing.root,
            "; ".join(listing.skipped[:3]),
        )


def list_labelled_files(
    root: str | os.PathLike[str], layout: str, classes: Any = None, attribute: str = "race"
) -> Listing:
    """List and label the files selected by ``layout`` / ``classes`` / ``attribute``.

    Raises FileNotFoundError for a missing root and ValueError (listing what exists) when a
    configured class has no images. Entries that cannot be used (symlink loops, names that are
    not UTF-8) are skipped, listed in ``Listing.skipped`` and reported in one warning.
    """
    path = check_root(root, check_layout(layout))
    if layout == "utkface":
        listing = _list_utkface(path, classes, attribute)
    else:
        listing = _list_folder(path, classes)
    warn_skipped(listing)
    return listing
