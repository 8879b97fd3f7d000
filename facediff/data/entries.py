"""Listing one data folder without tripping over what a real folder can hold.

`os.scandir` hands back entries that later code cannot use: a symlink loop (or a link into a
folder without permission) raises OSError as soon as one asks whether it is a file, and a file
name that is not valid UTF-8 arrives as a string with lone surrogates, which cannot be encoded,
printed to a UTF-8 log or stored as JSON. Both kinds are skipped here and reported, with the
reason and the fix, like unreadable images and malformed names; hidden entries are ignored.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class DirScan:
    """One folder's usable entries (names, sorted) and the skipped ones ("name: reason")."""

    files: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def is_valid_utf8(name: str) -> bool:
    """False for a name whose bytes are not UTF-8 (Python decodes them to lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def display_name(name: str) -> str:
    """``name`` as printable text: bytes that are not UTF-8 shown as ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def scan_dir(
    folder: str | os.PathLike[str],
    prefix: str = "",
    report: Callable[[str], bool] | None = None,
) -> DirScan:
    """List the non-hidden files and sub-folders of ``folder`` (symlinks followed).

    Skipped: names that are not valid UTF-8, and entries whose kind cannot be read (symlink
    loops, links into unreadable places). ``report(name)`` decides which skipped names are
    worth reporting (e.g. only image names in a class folder); ``prefix`` is put before each
    reported name (e.g. ``"classA/"``).
    """
    scan = DirScan()
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            shown = display_name(prefix + name)
            if not is_valid_utf8(name):
                if report is None or report(name):
                    scan.skipped.append(
                        f"{shown}: the name is not valid UTF-8. Fix: rename it (e.g. "
                        "convmv -f latin1 -t utf8 --notest)"
                    )
                continue
            try:
                is_dir = entry.is_dir()
                is_file = not is_dir and entry.is_file()
            except OSError as exc:  # ELOOP, EACCES, ...: is_file() does not swallow these
                if report is None or report(name):
                    reason = exc.strerror or type(exc).__name__
                    scan.skipped.append(
                        f"{shown}: cannot be read ({reason}). Fix: remove or repair the link"
                    )
                continue
            if is_dir:
                scan.dirs.append(name)
            elif is_file:
                scan.files.append(name)
    scan.files.sort()
    scan.dirs.sort()
    return scan
