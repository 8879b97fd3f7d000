"""Near-identical files: one photograph saved twice, not byte for byte.

Byte-identical copies share a digest and are split as one group (facediff.data.duplicates).
UTKFace also holds the same photograph under two time stamps, re-encoded or re-cropped by a
pixel, which no digest catches; one copy in train and one in test leaks a test face into
training and into every held-out number (FID floor, memorisation, the copy test). Such files
are found by their pixels: two images are near-identical when their root-mean-square
difference, both shrunk to 32 px with values in [0, 1], is at most `max_rms`
(`data.near_duplicates`).

Calibration on the 5,008-file UTKFace sample (../shared, whose makers removed the duplicates
they found): one pair of the same photograph is left, at RMS 0.041; the nearest two different
photographs are 0.078 apart, and 99% of files have no other file within 0.092. 0.06 lies in
that gap. Mirrored copies are not looked for.

After the split is drawn, a group of near-identical files with a member in the training split
loses its held-out members (the training split stays exactly as drawn, so a run's batches do
not change); a group only held out moves into the split of its first file (by name). Every
other file keeps its split. The comparison is all pairs: 14-16 s for 23,708 random images (as many
as the full release; at 80 and 32 px) on the 2-core Xeon of BENCHMARKS.md, once per setup; 0.3 s
for the recipe's setup on the 5,000-file sample.
Training compares the decoded-image cache (data.load_size) shrunk to 32 px, the audit images
decoded at 32 px: a pair right at the threshold can fall on different sides of it in the two.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from facediff.data.splits import SPLIT_NAMES

COMPARE_SIZE = 32


def pixel_vectors(images: Tensor, size: int = COMPARE_SIZE) -> Tensor:
    """(N, 3, H, W) images in [0, 1] -> (N, 3 * s * s) float32 rows, s = min(H, size).

    Larger images are shrunk (antialiased) to `size` first: a copy stays a copy at 32 px, and
    the vectors of a full UTKFace release stay small enough to hold."""
    if images.ndim != 4:
        raise ValueError(f"Expected images (N, C, H, W), got shape {tuple(images.shape)}.")
    if images.shape[-1] > size:
        images = F.interpolate(images.float(), size=(size, size), mode="area")
    return images.float().flatten(1)


def image_vectors(images: Tensor, rows: list[int] | None = None, chunk: int = 1024) -> Tensor:
    """`pixel_vectors` of (N, 3, H, W) uint8 or [0, 1] float images (only `rows`, if given), a
    chunk at a time: a full UTKFace release at 80 px would take 1.7 GB as float at once."""
    rows = list(range(len(images))) if rows is None else rows
    parts = []
    for start in range(0, len(rows), chunk):
        block = images[torch.tensor(rows[start : start + chunk], dtype=torch.long)]
        if block.dtype == torch.uint8:
            block = block.float() / 255
        parts.append(pixel_vectors(block))
    return torch.cat(parts) if parts else torch.zeros(0, 3 * COMPARE_SIZE**2)


def near_identical_pairs(
    images: Tensor, max_rms: float, rows: list[int] | None = None, chunk: int = 1024
) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, of `images` ((N, 3, H, W) uint8, or float in [0, 1]; positions in
    `rows` when given) whose RMS difference at 32 px is at most `max_rms`; sorted."""
    if not math.isfinite(max_rms) or max_rms <= 0:
        raise ValueError(f"max_rms must be a number > 0, got {max_rms!r}.")
    x = image_vectors(images, rows)  # (N, D)
    limit = x.shape[1] * max_rms**2  # on the squared L2 distance
    norms = (x * x).sum(1)  # (N,)
    pairs: list[tuple[int, int]] = []
    for start in range(0, len(x), chunk):
        block, rest = x[start : start + chunk], x[start:]  # (n, D), (N - start, D): j >= i only
        d2 = norms[start : start + chunk, None] + norms[None, start:] - 2 * block @ rest.T
        hit_i, hit_j = torch.nonzero(d2 <= limit, as_tuple=True)  # (n, N - start) matrix
        for i, j in zip((hit_i + start).tolist(), (hit_j + start).tolist(), strict=True):
            if i < j:
                pairs.append((i, j))
    return pairs


def connected_groups(n: int, pairs: list[tuple[int, int]]) -> list[list[int]]:
    """The groups of more than one item that `pairs` link (union-find), each sorted, ordered by
    their first item."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def separate_near_identical(
    rows: dict[str, list[int]], images: Tensor, max_rms: float
) -> tuple[dict[str, list[int]], list[list[int]], int]:
    """Keep near-identical images out of different splits, without touching the training split.

    `rows` maps split name -> index rows into `images`, whose row order is the files' sorted
    names. A group with a member in train loses its held-out members (they are training images
    in all but name); a group only held out moves into the split of its first member. Returns
    the new rows (sorted), the groups found (index rows) and how many images were dropped or
    moved."""
    used = sorted(r for name in SPLIT_NAMES for r in rows.get(name, []))
    split_of: dict[int, str | None] = {r: n for n in SPLIT_NAMES for r in rows.get(n, [])}
    groups = [
        [used[i] for i in g]
        for g in connected_groups(len(used), near_identical_pairs(images, max_rms, rows=used))
    ]
    changed = 0
    for group in groups:
        in_train = any(split_of[r] == "train" for r in group)
        target = "train" if in_train else split_of[group[0]]
        for r in group:
            if split_of[r] != target:
                changed += 1
                split_of[r] = None if in_train else target  # None: dropped
    out = {name: sorted(r for r in used if split_of[r] == name) for name in SPLIT_NAMES}
    return out, groups, changed
