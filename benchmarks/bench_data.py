"""Data loading: images/s out of facediff's DataModule (decode, resize, augment, collate).

The bench writes its own folder of real-size 200x200 JPEGs (UTKFace's aligned-and-cropped size)
in the folder layout, three classes, and reads it through `FaceDataModule` with UTKFace's
training augmentation (flip, rotation, random resized crop, colour jitter) for 0 and 2 workers,
with and without the decoded-image cache. Each case keeps its (persistent-worker) loader; the
first epoch of every case is warm-up, then whole epochs are timed round-robin across the cases.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.common import summarize

AUGMENT = {
    "hflip": 0.5,
    "rotation": 10,
    "crop_scale": [0.8, 1.0],
    "color_jitter": {"brightness": 0.1, "contrast": 0.1, "saturation": 0.1, "hue": 0.02},
}


def write_jpegs(root: Path, per_class: int, size: int = 200, seed: int = 0) -> Path:
    """root/<class>/*.jpg: smooth colour fields with texture, JPEG quality 90 (like photos)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for c, name in enumerate(("a", "b", "c")):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = rng.uniform(40, 215, (3, 1, 1)) + 40 * np.sin(6 * xx + rng.uniform(0, 6))
            field = base + 30 * yy * rng.uniform(-1, 1, (3, 1, 1))
            pixels = field + rng.normal(0, 12, (3, size, size))
            image = np.clip(pixels, 0, 255).astype(np.uint8).transpose(1, 2, 0)
            Image.fromarray(image).save(folder / f"{c}_{i:05d}.jpg", quality=90)
    return root


def _datamodule(root: Path, cache_dir: Path, size: int, batch: int, workers: int, cache: bool):
    from facediff.data import FaceDataModule

    return FaceDataModule(
        root=str(root),
        layout="folder",
        image_size=size,
        batch_size=batch,
        num_workers=workers,
        split={"train": 1.0, "val": 0.0, "test": 0.0},
        cache_images=cache,
        cache_dir=str(cache_dir),
        augment=AUGMENT,
    )


def run_data(
    size: int = 64,
    batch: int = 64,
    per_class: int = 200,
    workers: tuple[int, ...] = (0, 2),
    reps: int = 3,
    root: Path | None = None,
) -> dict[str, Any]:
    """{case: {"img_per_s": ..., "setup_s": ...}} for workers x {cache, no cache}."""
    tmp = tempfile.TemporaryDirectory(prefix="facediff-bench-data-")
    base = Path(tmp.name)
    folder = root or write_jpegs(base / "faces", per_class)
    loaders, setup, counts, out = {}, {}, {}, {}
    torch.manual_seed(0)
    for cache in (True, False):
        for w in workers:
            key = f"workers={w}/{'cache' if cache else 'decode'}"
            dm = _datamodule(folder, base / "cache", size, batch, w, cache)
            start = time.perf_counter()
            dm.prepare_data()
            dm.setup("fit")
            setup[key] = time.perf_counter() - start
            loaders[key] = dm.train_dataloader()
            counts[key] = len(loaders[key]) * batch
    times: dict[str, list[float]] = {k: [] for k in loaders}
    for round_ in range(reps + 1):  # round 0: warm-up (workers start, caches fill)
        for key, loader in loaders.items():
            start = time.perf_counter()
            n = sum(int(x.shape[0]) for x, _ in loader)
            if round_:
                times[key].append(time.perf_counter() - start)
            counts[key] = n
    for key in loaders:
        out[key] = {
            "images_per_epoch": counts[key],
            "img_per_s": summarize([counts[key] / t for t in times[key]]),
            "setup_s": setup[key],
        }
    del loaders
    tmp.cleanup()
    return {"size": size, "batch": batch, "files": 3 * per_class, "cases": out}
