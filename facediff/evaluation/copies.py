"""Copy detection in pixel space: is a sample a copy of one training image?

The feature-space memorised share (metrics.memorisation) asks whether a sample lies nearer to
the training set than real held-out faces do; in a group classifier's feature space two
different people of one group are near, so it flags look-alikes as well as copies. The copy
test asks the sharper question that the memorisation literature asks (Yoon et al. 2023,
"Diffusion probabilistic models generalize when they fail to memorize"; Gu et al. 2023, "On
memorization in diffusion models"): a sample x is a copy when its nearest training image is
much nearer than the second nearest,

    ratio(x) = ||x - NN_1(x)||_2 / ||x - NN_2(x)||_2 < max_ratio   (1/3 in both papers),

in pixel space, against the training images and their mirror images (training flips them). A
fresh face sits about as far from its nearest training face as from the next
(ratio near 1); a copy sits on one of them. The same test on real held-out faces (the floor)
counts the data set's own near-duplicates across splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from facediff.data.near_duplicates import pixel_vectors as pixel_vectors  # re-exported
from facediff.evaluation.metrics import wilson_interval


def copy_ratios(
    queries: Tensor, references: Tensor, mirrored: Tensor | None = None, chunk: int = 512
) -> tuple[Tensor, Tensor, Tensor]:
    """For each query row: the distance to its nearest reference over that to its second nearest,
    the nearest's index, and whether its mirror image was the nearer version; three (N_q,).
    Needs at least two references.

    `mirrored` (optional, aligned with `references`): the references flipped left-right. A model
    trained with flips sees both, so a reference's distance is the nearer of its two versions,
    and the second nearest is always another image, never the mirror of the first."""
    if len(references) < 2:
        raise ValueError(
            f"The copy test needs >= 2 training images, got {len(references)}: add images or "
            "enlarge data.split's train fraction."
        )
    if mirrored is not None and mirrored.shape != references.shape:
        raise ValueError(
            f"mirrored {tuple(mirrored.shape)} != references {tuple(references.shape)}"
        )
    ratios, indices, flips = [], [], []
    for part in queries.split(chunk):
        d = torch.cdist(part.double(), references.double())  # (chunk, N_ref)
        flipped = torch.zeros_like(d, dtype=torch.bool)
        if mirrored is not None:
            d_mirror = torch.cdist(part.double(), mirrored.double())
            flipped = d_mirror < d
            d = torch.minimum(d, d_mirror)
        near, index = d.topk(2, dim=1, largest=False)  # (chunk, 2), ascending
        ratios.append(near[:, 0] / near[:, 1].clamp_min(1e-12))
        indices.append(index[:, 0])
        flips.append(flipped.gather(1, index[:, :1]).squeeze(1))
    return torch.cat(ratios), torch.cat(indices), torch.cat(flips)


def copied(ratios: Tensor, max_ratio: float) -> dict[str, Any]:
    """The share of rows whose ratio is under `max_ratio`, the count and the 95% interval."""
    count = int((ratios < max_ratio).sum())
    return {
        "copied_share": count / len(ratios) if len(ratios) else 0.0,
        "copied_count": count,
        "copied_ci95": list(wilson_interval(count, len(ratios))),
    }


def copy_metrics(
    ratios: Tensor,
    labels: Tensor,
    class_names: Sequence[str],
    max_ratio: float,
    floor_ratios: Tensor | None = None,
    floor_labels: Tensor | None = None,
) -> dict[str, Any]:
    """The copied share overall and per class, and (given real held-out faces' ratios and labels)
    the same share of those faces, `copied_share_floor`. Returns {..., "per_class": {name: ...}}
    to merge into metrics.group_metrics' result."""
    if (floor_ratios is None) != (floor_labels is None):
        raise ValueError("Give floor_ratios and floor_labels together, or neither.")

    def row(mask: Tensor | None, floor_mask: Tensor | None) -> dict[str, Any]:
        values = copied(ratios if mask is None else ratios[mask], max_ratio)
        if floor_ratios is not None:
            held_out = floor_ratios if floor_mask is None else floor_ratios[floor_mask]
            values["copied_share_floor"] = copied(held_out, max_ratio)["copied_share"]
        return values

    out = {**row(None, None), "copy_max_ratio": max_ratio, "per_class": {}}
    out["copy_ratio_min"] = float(ratios.min()) if len(ratios) else None  # the nearest call
    for c, name in enumerate(class_names):
        floor_mask = None if floor_labels is None else floor_labels == c
        out["per_class"][name] = row(labels == c, floor_mask)
    return out
