"""Map-style dataset over cached uint8 images (or file paths) and integer labels."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from facediff.data.decode import load_image

log = logging.getLogger("facediff.data")

Transform = Callable[[torch.Tensor], torch.Tensor]


class FaceDataset(Dataset):
    """Item ``i`` is row ``rows[i]`` of a shared table of images (or paths) and labels.

    Returns ``(image, label)``: the image as ``transform`` makes it (float32 (3, S, S) in [-1, 1]
    for evaluation; the uint8 (3, L, L) pixels for training, whose batch the loader's collate
    augments), the label an int64 scalar tensor. Sharing one table between the train/val/test
    datasets avoids copying the cached pixels per split.

    With ``images`` (uint8, (N, 3, L, L)) nothing is decoded at training time. With ``paths``
    instead, each item is decoded in ``__getitem__`` (center-cropped square, resized to
    ``load_size``); a file that fails to decode (changed since indexing) is replaced by another
    random item with a rate-limited warning, so one bad file never stops training.
    """

    def __init__(
        self,
        labels: Sequence[int],
        transform: Transform,
        *,
        images: torch.Tensor | None = None,
        paths: Sequence[str | os.PathLike[str]] | None = None,
        load_size: int | None = None,
        rows: Sequence[int] | None = None,
    ) -> None:
        if (images is None) == (paths is None):
            raise ValueError("FaceDataset needs exactly one of `images` or `paths`.")
        if paths is not None and load_size is None:
            raise ValueError("FaceDataset(paths=...) needs `load_size` to decode images.")
        n_table = len(images) if images is not None else len(paths or [])
        if len(labels) != n_table:
            raise ValueError(f"{len(labels)} labels for a table of {n_table} images.")
        self.images = images
        self.paths = [Path(p) for p in paths] if paths is not None else None
        self.load_size = load_size
        self.transform = transform
        self.rows = list(range(n_table)) if rows is None else [int(r) for r in rows]
        self._labels = [int(v) for v in labels]
        self.targets = [self._labels[r] for r in self.rows]
        self._failures = 0
        self._bad_rows: set[int] = set()
        self._last_warning = 0.0

    def __len__(self) -> int:
        return len(self.rows)

    def _pixels(self, row: int) -> torch.Tensor | None:
        if self.images is not None:
            return self.images[row]
        assert self.paths is not None and self.load_size is not None
        try:
            return load_image(self.paths[row], self.load_size)
        except Exception as exc:  # any decode failure: substitute, never crash training
            self._report_failure(self.paths[row], exc)
            self._bad_rows.add(row)
            return None

    def _report_failure(self, path: Path, exc: Exception) -> None:
        self._failures += 1
        now = time.monotonic()
        first_of_decade = self._failures in (1, 10, 100, 1000) or self._failures % 10000 == 0
        if first_of_decade or now - self._last_warning > 60:
            self._last_warning = now
            log.warning(
                "Could not decode %s (%s: %s); using another image instead (%d failure(s) so "
                "far in this process). The file changed since the index was built: fix or "
                "delete it, then rerun to rebuild the index.",
                path,
                type(exc).__name__,
                exc,
                self._failures,
            )

    def _substitute(self, item: int) -> tuple[torch.Tensor, int]:
        """Pixels and label of some other decodable item (random, then an ordered sweep)."""
        candidates = torch.randint(len(self.rows), (8,)).tolist()
        candidates += [(item + k) % len(self.rows) for k in range(1, len(self.rows))]
        for candidate in candidates:
            row = self.rows[candidate]
            if row in self._bad_rows:
                continue
            pixels = self._pixels(row)
            if pixels is not None:
                return pixels, self._labels[row]
        raise RuntimeError(
            f"None of the {len(self.rows)} images of this dataset can be decoded any more. "
            "Fix: check the dataset folder, then rerun to rebuild the index."
        )

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.rows[item]
        pixels = None if row in self._bad_rows else self._pixels(row)
        label = self._labels[row]
        if pixels is None:
            pixels, label = self._substitute(item)
        image = self.transform(pixels)
        return image, torch.tensor(label, dtype=torch.int64)
