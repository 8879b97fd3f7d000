"""What the pixel-space copy test (facediff/evaluation/copies.py) catches: altered copies of
training faces, each set against the test's 1/3 threshold.

    python -m benchmarks.copy_test ../shared/data/utkface [--n-train 4000] [--n-queries 200]

Reads the folder's images (sorted by name) at 32x32, takes the first `--n-train` as the
training set and the first `--n-queries` of those, altered, as the queries: exact copies,
mirrored ones, copies under Gaussian blur or pixel noise, and real faces outside the training
set for comparison. Prints, per alteration, the share with ratio under 1/3 and the median
ratio.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as F
from PIL import Image

from facediff.evaluation.copies import copy_ratios, pixel_vectors

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def load_folder(root: Path, size: int, limit: int) -> torch.Tensor:
    """Up to `limit` images of `root` (sorted by name) as (N, 3, size, size) in [0, 1]."""
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if len(files) < 3:
        raise SystemExit(f"{root}: found {len(files)} images, need at least 3.")
    images = []
    for path in files:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((size, size), Image.Resampling.BOX)
            images.append(F.to_dtype(F.pil_to_tensor(im), torch.float32, scale=True))
    return torch.stack(images)


def alterations(faces: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """The queries: altered copies of `faces`, by name."""
    gen = torch.Generator().manual_seed(seed)

    def noisy(sigma: float) -> torch.Tensor:
        return (faces + sigma * torch.randn(faces.shape, generator=gen)).clamp(0, 1)

    def blurred(sigma: float) -> torch.Tensor:
        return F.gaussian_blur(faces, [7, 7], [sigma, sigma])

    return {
        "exact copy": faces,
        "mirrored copy": faces.flip(-1),
        "blur sigma 0.5 px": blurred(0.5),
        "blur sigma 1.0 px": blurred(1.0),
        "blur sigma 1.5 px": blurred(1.5),
        "noise 3/100": noisy(0.03),
        "noise 6/100": noisy(0.06),
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-queries", type=int, default=200)
    args = parser.parse_args(argv)
    faces = load_folder(args.root, args.size, args.n_train + args.n_queries)
    n_train = min(args.n_train, len(faces) - 1)
    train, unseen = faces[:n_train], faces[n_train:][: args.n_queries]
    refs, mirrored = pixel_vectors(train), pixel_vectors(train.flip(-1))
    queries = {**alterations(train[: args.n_queries]), "real face, not in training": unseen}
    results = {}
    print(f"{len(train)} training faces, {args.size}px; share with ratio < 1/3, median ratio")
    for name, images in queries.items():
        ratios, _, _ = copy_ratios(pixel_vectors(images), refs, mirrored)
        results[name] = {
            "caught": float((ratios < 1 / 3).double().mean()),
            "median_ratio": float(ratios.median()),
            "n": len(ratios),
        }
        r = results[name]
        print(f"{name:28s} caught {r['caught']:6.1%}  median ratio {r['median_ratio']:.3f}")
    return results


if __name__ == "__main__":
    main()
