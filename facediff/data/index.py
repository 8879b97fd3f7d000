"""Decode every selected file once, hash it, and cache the result on disk.

Decoding thousands of JPEGs is the expensive part of data preparation, so it runs in parallel
(a DataLoader over a tiny decode dataset) and its result is cached in ``cache_dir`` under a key
that changes whenever the files, their sizes/mtimes or the image settings change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from facediff.atomic import atomic_save
from facediff.caches import keyed_payload, load_keyed
from facediff.data.decode import Decoded, read_and_decode
from facediff.data.workers import defer_stop_signals

log = logging.getLogger("facediff.data")

CACHE_VERSION = 2  # 2: a keyed_payload (facediff.caches)
CACHE_KIND = "image index"
PAYLOAD_FIELDS = ("relpaths", "digests", "sizes", "images", "unreadable", "load_size")
PARALLEL_THRESHOLD = 256  # below this many files, worker start-up costs more than it saves


class _DecodeDataset(Dataset):
    def __init__(self, paths: Sequence[Path], load_size: int | None) -> None:
        self.paths = list(paths)
        self.load_size = load_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, Decoded]:
        return index, read_and_decode(self.paths[index], self.load_size)


def _collate(batch: list[tuple[int, Decoded]]) -> dict[str, Any]:
    """Stack a batch in the worker so one shared-memory tensor crosses the process boundary."""
    images = None
    shapes = [d.image.shape for _, d in batch if d.image is not None]
    if shapes:
        images = torch.zeros((len(batch), *shapes[0]), dtype=torch.uint8)
        for row, (_, decoded) in enumerate(batch):
            if decoded.image is not None:
                images[row] = decoded.image
    return {
        "index": [i for i, _ in batch],
        "digest": [d.digest for _, d in batch],
        "size": [(d.width, d.height) for _, d in batch],
        "error": [d.error for _, d in batch],
        "images": images,
    }


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass
class DecodeResult:
    """Per-file outcome, in input order. Failed files have ``errors[i]`` set and zero pixels."""

    digests: list[str]
    sizes: torch.Tensor  # (N, 2) int64: original width, height
    errors: list[str | None]
    images: torch.Tensor | None  # (N, 3, S, S) uint8 when a load size was given


def decode_files(
    paths: Sequence[Path],
    load_size: int | None = None,
    num_workers: int | None = None,
    log_every_s: float = 15.0,
) -> DecodeResult:
    """Read, hash and fully decode ``paths`` in parallel (never raises for a bad file)."""
    n = len(paths)
    if num_workers is None:
        num_workers = 0 if n < PARALLEL_THRESHOLD else min(available_cpus(), 16)
    digests = [""] * n
    sizes = torch.zeros((n, 2), dtype=torch.int64)
    errors: list[str | None] = [None] * n
    images = torch.zeros((n, 3, load_size, load_size), dtype=torch.uint8) if load_size else None
    loader = DataLoader(
        _DecodeDataset(paths, load_size),
        batch_size=64,
        num_workers=num_workers,
        collate_fn=_collate,
        worker_init_fn=defer_stop_signals,  # a job's SIGTERM: the main process stops first
        # every DataLoader iterator draws a seed; from its own generator it leaves the global
        # stream alone, so a training run does not depend on whether its index was cached
        generator=torch.Generator(),
    )
    start = last_log = time.monotonic()
    if n >= PARALLEL_THRESHOLD:
        log.info("Decoding %d images with %d worker(s)...", n, num_workers)
    done = 0
    for batch in loader:
        for row, index in enumerate(batch["index"]):
            digests[index] = batch["digest"][row]
            sizes[index] = torch.tensor(batch["size"][row])
            errors[index] = batch["error"][row]
            if images is not None and batch["images"] is not None:
                images[index] = batch["images"][row]
        done += len(batch["index"])
        now = time.monotonic()
        if now - last_log > log_every_s and done < n:
            log.info("  decoded %d/%d images (%.0fs)", done, n, now - start)
            last_log = now
    if n >= PARALLEL_THRESHOLD:
        log.info("Decoded %d images in %.1fs", n, time.monotonic() - start)
    return DecodeResult(digests, sizes, errors, images)


@dataclass
class ImageIndex:
    """Decodable files (sorted relative paths) with content hashes, sizes and optional pixels."""

    relpaths: list[str]
    digests: list[str]
    sizes: torch.Tensor
    images: torch.Tensor | None
    unreadable: list[str]
    load_size: int | None
    cache_path: Path | None = None
    from_cache: bool = False


def index_key(
    root: Path, layout: str, relpaths: Sequence[str], load_size: int | None, cache_images: bool
) -> str:
    """Hash of everything the cached index depends on (file list, sizes, mtimes, settings)."""
    digest = hashlib.blake2b(digest_size=16)
    header = {
        "version": CACHE_VERSION,
        "layout": layout,
        "root": str(root.resolve()),
        "load_size": load_size if cache_images else None,
        "cache_images": bool(cache_images),
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for relpath in sorted(relpaths):
        try:
            stat = os.stat(root / relpath)
            stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        # surrogateescape: a name that is not valid UTF-8 still hashes (to its raw bytes)
        digest.update(f"\n{relpath}\t{stamp}".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _warn_unreadable(unreadable: list[str], reasons: list[str]) -> None:
    examples = "; ".join(f"{p} ({r})" for p, r in zip(unreadable[:3], reasons[:3], strict=True))
    log.warning(
        "Skipped %d unreadable image file(s), e.g. %s. Fix: re-download or delete them "
        "(python -m facediff.data ROOT lists them all).",
        len(unreadable),
        examples,
    )


def _from_payload(payload: dict[str, Any], path: Path) -> ImageIndex:
    return ImageIndex(
        relpaths=list(payload["relpaths"]),
        digests=list(payload["digests"]),
        sizes=payload["sizes"],
        images=payload["images"],
        unreadable=list(payload["unreadable"]),
        load_size=payload["load_size"],
        cache_path=path,
        from_cache=True,
    )


def build_index(
    root: str | os.PathLike[str],
    layout: str,
    relpaths: Sequence[str],
    *,
    cache_dir: str | os.PathLike[str] | None,
    load_size: int | None,
    cache_images: bool = True,
    num_workers: int | None = None,
) -> ImageIndex:
    """Decode ``relpaths`` (relative to ``root``) once, or load the cached result.

    Undecodable files are dropped with a single warning. With ``cache_images`` the decoded
    pixels, center-cropped square and resized to ``load_size``, are kept as uint8 so training
    never decodes a JPEG again. ``cache_dir=None`` disables the on-disk cache.
    """
    root = Path(root)
    relpaths = sorted(relpaths)
    size = load_size if cache_images else None
    cache_path = None
    if cache_dir is not None:
        key = index_key(root, layout, relpaths, load_size, cache_images)
        cache_path = Path(cache_dir) / f"index-{layout}-{key[:24]}.pt"
        payload = load_keyed(
            cache_path, CACHE_KIND, CACHE_VERSION, key, PAYLOAD_FIELDS, mmap=True
        )  # a damaged or mismatched cache is rebuilt with a warning, never fatal
        if payload is not None:
            return _from_payload(payload, cache_path)
    result = decode_files([root / p for p in relpaths], size, num_workers)
    good = [i for i, err in enumerate(result.errors) if err is None]
    bad = [i for i, err in enumerate(result.errors) if err is not None]
    if bad:
        _warn_unreadable([relpaths[i] for i in bad], [str(result.errors[i]) for i in bad])
    keep = torch.tensor(good, dtype=torch.long)
    images = None
    if result.images is not None:
        images = result.images if not bad else result.images[keep].contiguous()
    index = ImageIndex(
        relpaths=[relpaths[i] for i in good],
        digests=[result.digests[i] for i in good],
        sizes=result.sizes[keep],
        images=images,
        unreadable=[relpaths[i] for i in bad],
        load_size=size,
        cache_path=cache_path,
    )
    if cache_path is not None:
        payload = keyed_payload(
            CACHE_KIND,
            CACHE_VERSION,
            key,
            relpaths=index.relpaths,
            digests=index.digests,
            sizes=index.sizes,
            images=index.images,
            unreadable=index.unreadable,
            load_size=index.load_size,
        )
        atomic_save(payload, cache_path)  # unique temp file + rename: safe for parallel jobs
        log.info("Saved image index (%d files) to %s", len(index.relpaths), cache_path)
    return index
