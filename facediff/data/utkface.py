"""UTKFace file-name parsing and class selection.

UTKFace encodes its labels in the file name: ``[age]_[gender]_[race]_[datetime].jpg.chip.jpg``
(the aligned/cropped release) or ``....jpg`` (the in-the-wild release). A handful of names in the
public release are broken (missing race field, stray spaces, 16/18-digit timestamps); those are
reported as malformed and never guessed at.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facediff.data.entries import scan_dir

UTKFACE_PATTERN = re.compile(r"^(\d+)_([01])_([0-4])_(\d{17})\.jpg(\.chip\.jpg)?$")
UTKFACE_NAME_FORMAT = "[age]_[gender]_[race]_[datetime].jpg[.chip.jpg]"
# What to do about files whose names carry no labels (they are listed and left out, never read)
MALFORMED_FIX = "rename them to that pattern to use them, or move them out of the folder"
RACE_NAMES: dict[int, str] = {0: "White", 1: "Black", 2: "Asian", 3: "Indian", 4: "Others"}
GENDER_NAMES: dict[int, str] = {0: "male", 1: "female"}
ATTRIBUTES = ("race", "gender", "age")


@dataclass(frozen=True)
class UTKRecord:
    """One well-formed UTKFace file and the labels parsed from its name."""

    path: Path
    age: int
    gender: int
    race: int


def parse_utkface_name(name: str) -> tuple[int, int, int] | None:
    """Return ``(age, gender, race)`` for a well-formed UTKFace file name, else None."""
    match = UTKFACE_PATTERN.match(name)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


def scan_utkface(root: str | os.PathLike[str]) -> tuple[list[UTKRecord], list[str]]:
    """List a flat UTKFace folder.

    Returns the well-formed records (sorted by file name) and the sorted names of the files whose
    name does not follow the UTKFace convention. Hidden files and sub-folders are ignored; so are
    entries that cannot be used at all (see `scan_utkface_entries`, which reports them).
    """
    records, malformed, _ = scan_utkface_entries(root)
    return records, malformed


def scan_utkface_entries(
    root: str | os.PathLike[str],
) -> tuple[list[UTKRecord], list[str], list[str]]:
    """`scan_utkface` plus the skipped entries ("name: reason"): symlink loops and names that
    are not valid UTF-8 (`facediff.data.entries`)."""
    root = Path(root)
    scan = scan_dir(root)
    records: list[UTKRecord] = []
    malformed: list[str] = []
    for name in scan.files:
        parsed = parse_utkface_name(name)
        if parsed is None:
            malformed.append(name)
        else:
            records.append(UTKRecord(root / name, *parsed))
    return records, malformed, scan.skipped


def default_utkface_classes(attribute: str) -> dict[str, int]:
    """Classes used when none are configured: every race, or both genders."""
    if attribute == "race":
        return {name: value for value, name in RACE_NAMES.items()}
    if attribute == "gender":
        return {name: value for value, name in GENDER_NAMES.items()}
    raise ValueError(
        f"UTKFace attribute {attribute!r} has no default classes. Fix: set `classes` explicitly, "
        "e.g. classes={young: [0, 30], old: [30, 120]} for attribute=age (ranges are [lo, hi))."
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class ClassSelector:
    """Maps a UTKFace record to a class index (dict order of ``classes``) or None.

    ``classes`` maps class name -> label value: an int for race (0..4) / gender (0..1), or a
    ``[lo, hi)`` pair of ints for age. Validation happens in the constructor so a bad config
    fails before any file is touched.
    """

    def __init__(self, attribute: str, classes: Mapping[Any, Any] | None) -> None:
        if attribute not in ATTRIBUTES:
            raise ValueError(
                f"Unknown UTKFace attribute {attribute!r}. Fix: set attribute to one of "
                f"{', '.join(ATTRIBUTES)}."
            )
        if classes is None:
            classes = default_utkface_classes(attribute)
        if not isinstance(classes, Mapping):
            raise ValueError(
                f"UTKFace `classes` must be a mapping of class name -> label value, got "
                f"{type(classes).__name__}. Fix: write e.g. classes={{white: 0, black: 1}} for "
                "attribute=race."
            )
        if len(classes) == 0:
            raise ValueError(
                "UTKFace `classes` is empty, so no image would be selected. Fix: map at least one "
                "class name to a label value, e.g. classes={white: 0, black: 1}."
            )
        self.attribute = attribute
        self.names: list[str] = [str(name) for name in classes]
        if attribute == "age":
            self.values: list[int | tuple[int, int]] = self._check_age_ranges(classes)
        else:
            self.values = self._check_categorical(classes)

    def _check_categorical(self, classes: Mapping[Any, Any]) -> list[int | tuple[int, int]]:
        table = RACE_NAMES if self.attribute == "race" else GENDER_NAMES
        allowed = ", ".join(f"{value} ({name})" for value, name in table.items())
        seen: dict[int, str] = {}
        values: list[int | tuple[int, int]] = []
        for name, value in classes.items():
            if not _is_int(value) or value not in table:
                raise ValueError(
                    f"UTKFace class {name!r}: {self.attribute} value {value!r} is invalid. "
                    f"Fix: use one int of {allowed}."
                )
            if value in seen:
                raise ValueError(
                    f"UTKFace classes {seen[value]!r} and {name!r} both use {self.attribute} "
                    f"value {value}. Fix: give each class a different value."
                )
            seen[value] = str(name)
            values.append(value)
        return values

    def _check_age_ranges(self, classes: Mapping[Any, Any]) -> list[int | tuple[int, int]]:
        ranges: list[tuple[int, int]] = []
        for name, value in classes.items():
            ok = (
                isinstance(value, Sequence)
                and not isinstance(value, str)
                and len(value) == 2
                and all(_is_int(v) for v in value)
                and 0 <= value[0] < value[1]
            )
            if not ok:
                raise ValueError(
                    f"UTKFace class {name!r}: age range {value!r} is malformed. Fix: use a pair "
                    "[lo, hi] of ints with 0 <= lo < hi; the range is half-open, so [20, 30] "
                    "selects ages 20..29."
                )
            ranges.append((int(value[0]), int(value[1])))
        order = sorted(range(len(ranges)), key=lambda i: ranges[i])
        for a, b in itertools.pairwise(order):
            if ranges[b][0] < ranges[a][1]:
                raise ValueError(
                    f"UTKFace age ranges overlap: {self.names[a]!r} {list(ranges[a])} and "
                    f"{self.names[b]!r} {list(ranges[b])}. Fix: make the [lo, hi) ranges "
                    "disjoint, e.g. [0, 30] and [30, 60]."
                )
        return list(ranges)

    def describe(self, index: int) -> str:
        """Human-readable label rule of class ``index`` (for error messages and logs)."""
        value = self.values[index]
        if isinstance(value, tuple):
            return f"age in [{value[0]}, {value[1]})"
        table = RACE_NAMES if self.attribute == "race" else GENDER_NAMES
        return f"{self.attribute}={value} ({table[value]})"

    def __call__(self, record: UTKRecord) -> int | None:
        key = getattr(record, self.attribute)
        for index, value in enumerate(self.values):
            if isinstance(value, tuple):
                if value[0] <= key < value[1]:
                    return index
            elif key == value:
                return index
        return None
