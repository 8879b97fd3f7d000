"""Reading facediff's on-disk caches safely, and the hashes that key them.

A cache file is a dict saved with `torch.save` through `facediff.atomic` and read back with
``weights_only=True`` (tensors and plain Python values only, no code). It carries its kind,
format version and key, so that a file of another kind or version, a hash collision of the
short key in its name, a truncated file or an unpickling error all mean the same thing: the
cache is rebuilt, with one warning naming the file. Nothing is deleted on the read side; the
rebuild replaces the file atomically.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

CACHE_TAG = "facediff_cache"

_digests: dict[tuple[str, int, int], str] = {}


def warn_rebuild(path: str | os.PathLike[str], what: str, problem: str) -> None:
    """The one warning for a cache that cannot be used: it names the file and what happens."""
    log.warning(
        "Ignoring the %s cache %s (%s); rebuilding it. The rebuilt cache replaces the file; "
        "delete it by hand if this repeats.",
        what,
        path,
        problem,
    )


def read_cache(
    path: str | os.PathLike[str],
    what: str,
    problem: Callable[[Any], str | None],
    *,
    mmap: bool = False,
) -> Any | None:
    """The object saved in ``path``, or None when there is none or it is unusable.

    ``problem(obj)`` returns why a loaded object does not fit (wrong kind, version or key), or
    None when it does. Unreadable and unfitting files are reported with `warn_rebuild`.
    ``mmap`` maps tensors from the file instead of reading them (large image caches).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # truncated, not a torch file, unpickling refused: rebuild
        warn_rebuild(path, what, f"unreadable: {type(exc).__name__}: {exc}")
        return None
    why = problem(obj)
    if why is not None:
        warn_rebuild(path, what, why)
        return None
    return obj


def keyed_payload(kind: str, version: int, key: str, **fields: Any) -> dict[str, Any]:
    """A cache payload: ``fields`` plus the kind, version and full key `load_keyed` checks."""
    return {CACHE_TAG: kind, "version": version, "key": key, **fields}


def payload_problem(
    obj: Any, kind: str, version: int, key: str, fields: Iterable[str]
) -> str | None:
    """Why ``obj`` is not a `keyed_payload` of this kind, version and key with ``fields``."""
    if not isinstance(obj, dict) or obj.get(CACHE_TAG) != kind:
        return f"not a facediff {kind} cache"
    if obj.get("version") != version:
        return f"format version {obj.get('version')!r}, this facediff writes {version}"
    if obj.get("key") != key:
        return "written for other inputs (key mismatch)"
    missing = [name for name in fields if name not in obj]
    if missing:
        return f"missing entries {missing}"
    return None


def load_keyed(
    path: str | os.PathLike[str],
    kind: str,
    version: int,
    key: str,
    fields: Iterable[str],
    *,
    mmap: bool = False,
) -> dict[str, Any] | None:
    """`read_cache` of a `keyed_payload`: the payload, or None (with a warning if unusable)."""
    names = list(fields)
    return read_cache(
        path, kind, lambda obj: payload_problem(obj, kind, version, key, names), mmap=mmap
    )


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes (e.g. a weights file, so a cache keyed by it changes when the
    file does); remembered per path, size and modification time within one process."""
    path = Path(path).resolve()
    stat = path.stat()
    stamp = (str(path), stat.st_size, stat.st_mtime_ns)
    if stamp not in _digests:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _digests[stamp] = digest.hexdigest()
    return _digests[stamp]
