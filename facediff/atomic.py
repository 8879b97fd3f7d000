"""Atomic writes of files and folders, safe when several processes write the same path.

Parallel sweep jobs, DDP ranks and several nodes on one shared file system may build the same
cache at the same moment. Every writer here works in its own uniquely named temporary file or
folder next to the target (same directory, so same file system) and publishes it with one
rename, so

- a reader sees either the old complete target or a new complete one, never half of one;
- two writers never write into, or delete, each other's temporary files;
- a writer killed half-way leaves only its own temporary, whose name starts with
  ``.<target name>.tmp-`` and is removed by a later writer once it is older than
  ``STALE_TEMP_S`` (an hour, far longer than any cache takes to write).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

STALE_TEMP_S = 3600.0
_NAME_CLASH = {errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR}
FILE_MODE = 0o644  # mkstemp creates 0600; caches and outputs are not secret


def temp_prefix(target: Path) -> str:
    """The name prefix of every temporary that ``target``'s writers use."""
    return f".{target.name}.tmp-"


def remove_stale_temps(target: str | os.PathLike[str], older_than_s: float = STALE_TEMP_S) -> int:
    """Delete temporaries of ``target`` left by killed writers (only those older than
    ``older_than_s``, so a writer still at work keeps its own); returns how many went."""
    target = Path(target)
    if not target.parent.is_dir():
        return 0
    removed = 0
    now = time.time()
    prefix = temp_prefix(target)
    for stale in [p for p in target.parent.iterdir() if p.name.startswith(prefix)]:
        try:
            if now - stale.lstat().st_mtime < older_than_s:
                continue
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale)
            else:
                stale.unlink()
            removed += 1
        except OSError:  # another writer removed it first, or it is not ours to remove
            continue
    if removed:
        log.info("Removed %d stale temporary file(s) of %s", removed, target)
    return removed


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary file path next to ``target``; when the block ends without an
    exception it atomically replaces ``target``, else it is deleted.

        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=temp_prefix(target))
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)  # the data is on disk before the rename makes it visible
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
        _fsync(target.parent)  # and the rename itself survives a crash
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _fsync(path: Path) -> None:
    """fsync a file or a folder (a no-op where a folder cannot be opened, e.g. Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_save(obj: Any, target: str | os.PathLike[str]) -> None:
    """``torch.save(obj, target)`` through a unique temporary file and one rename."""
    with atomic_path(target) as tmp:
        torch.save(obj, tmp)


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` through a unique temporary file and one rename."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``target`` through a unique temporary file and one rename."""
    atomic_write_bytes(target, text.encode(encoding))


def _move_aside(target: Path) -> Path | None:
    """Rename ``target`` to a unique temporary name (to delete it); None when it is gone."""
    aside = target.parent / f"{temp_prefix(target)}old-{os.getpid()}-{uuid.uuid4().hex}"
    try:
        os.rename(target, aside)
    except FileNotFoundError:
        return None
    return aside


def publish_folder(
    tmp: Path, target: Path, is_complete: Callable[[Path], bool], attempts: int = 5
) -> bool:
    """Rename the finished folder ``tmp`` to ``target``.

    When ``target`` exists and ``is_complete(target)`` holds, another writer finished first:
    ``tmp`` is deleted and False returned (its content is the same by construction). An
    incomplete or outdated ``target`` is moved aside and deleted, then ``tmp`` takes its place.
    """
    for _ in range(attempts):
        try:
            os.rename(tmp, target)  # fails on an existing non-empty folder, never merges
            return True
        except OSError as exc:
            if exc.errno not in _NAME_CLASH:
                raise  # a real error (permissions, another file system), not a name clash
        if not target.exists() and not target.is_symlink():
            continue  # another writer moved it aside meanwhile: try again
        if is_complete(target):
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        aside = _move_aside(target)
        if aside is not None and aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside, ignore_errors=True)
        elif aside is not None:
            aside.unlink()
    shutil.rmtree(tmp, ignore_errors=True)
    raise RuntimeError(
        f"Could not publish {target}: other processes kept replacing it. Fix: run one job first "
        "to build it, or give each job its own folder."
    )


@contextlib.contextmanager
def atomic_folder(
    target: str | os.PathLike[str], is_complete: Callable[[Path], bool]
) -> Iterator[Path]:
    """Yield a fresh empty folder next to ``target`` to fill; when the block ends without an
    exception it becomes ``target`` (see `publish_folder`), else it is deleted.
    ``is_complete(folder)`` tells a finished ``target`` from a stale or partial one."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=temp_prefix(target)))
    os.chmod(tmp, 0o755)  # mkdtemp creates 0700; the data is not secret
    try:
        yield tmp
        publish_folder(tmp, target, is_complete)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
