"""Checks for values that come from outside the code (a checkpoint file, a data folder, a
config) and would otherwise choose code or become file names.

Two rules, used wherever such values are read:
- `check_plain`: a config read from a checkpoint is data only. It may hold None, bools, ints,
  floats, strings and lists (and, where allowed, string-keyed mappings) of those; a key that
  starts with "_" (Hydra's `_target_`, `_args_`, `_partial_`, ...) is refused wherever it
  appears, so nothing in the file can name a callable.
- `check_name`: a name that becomes a file or folder name (a class name) is one plain path
  component: not empty, no "/", "\\" or NUL, no control characters, not starting with ".".
  It therefore cannot leave the folder it is joined to. `inside` checks the joined path again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Plain = None | bool | int | float | str | list[Any] | dict[str, Any]


class UnsafeValueError(ValueError):
    """A value from a file or config that would choose code or escape an output folder."""


def check_plain(value: Any, where: str, mappings: bool = False) -> Plain:
    """`value` as plain Python data (lists for sequences, dicts for mappings), or raise.

    `where` names the value in the error (e.g. "the checkpoint's model config"). Mappings are
    refused unless `mappings` is true; a mapping key starting with "_" is always refused.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise UnsafeValueError(f"{where}: mapping keys must be strings, got {key!r}.")
            if key.startswith("_"):
                raise UnsafeValueError(
                    f"{where}: key {key!r} is refused. Keys starting with '_' (like Hydra's "
                    "_target_) would let the file choose code, and facediff never calls code a "
                    "file names."
                )
        if not mappings:
            raise UnsafeValueError(f"{where}: expected a plain value, got a mapping {value!r}.")
        return {key: check_plain(item, f"{where}.{key}", mappings) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        return [check_plain(item, f"{where}[{i}]", mappings) for i, item in enumerate(value)]
    raise UnsafeValueError(
        f"{where}: values must be None, bools, numbers, strings or lists of them, got "
        f"{type(value).__name__} {value!r}."
    )


def check_name(name: Any, what: str) -> str:
    """`name` if it is safe as one file or folder name, else an UnsafeValueError naming `what`."""
    problem = None
    if not isinstance(name, str):
        problem = f"is a {type(name).__name__}, not a string"
    elif not name:
        problem = "is empty"
    elif "/" in name or "\\" in name:
        problem = "contains a path separator ('/' or '\\')"
    elif name.startswith("."):
        problem = "starts with '.' (hidden, '.' or '..')"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "contains a NUL or another control character"
    if problem is not None:
        raise UnsafeValueError(
            f"{what} {name!r} {problem}; it would become a file or folder name. Rename it (one "
            "plain name, e.g. 'indian' or 'with_glasses')."
        )
    return name


def check_names(names: Sequence[Any], what: str) -> list[str]:
    """Every name checked with `check_name`; duplicates are refused too."""
    checked = [check_name(n, what) for n in names]
    dups = sorted({n for n in checked if checked.count(n) > 1})
    if dups:
        raise UnsafeValueError(f"{what}s must be unique; repeated: {dups}.")
    return checked


def inside(root: str | Path, *parts: str) -> Path:
    """`root / parts...`, refused unless it stays inside `root` (symlinks resolved)."""
    base = Path(root).resolve()
    path = base.joinpath(*parts).resolve()
    if path != base and base not in path.parents:
        raise UnsafeValueError(f"Refusing to write {path}: it is outside {base}.")
    return path
