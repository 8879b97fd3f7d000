"""Evaluation metrics as pure functions of feature vectors, logits and labels.

Shapes: features (N, D) float, logits (N, K), labels (N,) int64 class ids. FID and KID come from
torchmetrics, fed with precomputed features (so one feature pass serves every metric, every
class and every sweep point); class accuracy from torchmetrics too. What is the project's own:
- class consistency: the share of generated samples the classifier assigns to the class they
  were asked for, set against the same classifier's accuracy on real test images (the ratio is
  the headline: generated faces should be recognised as often as real ones);
- diversity: the mean pairwise feature distance within a class;
- the floor: FID and KID between two disjoint sets of real faces (the test split and another
  held-out split, at most as many per class as were generated), i.e. what a perfect generator
  would score with this many images; the samples' FID / floor ratio is comparable across setups;
- memorisation: each sample's nearest training image in feature space, and the share of samples
  closer to a training image than `threshold` (by default a low quantile of the distances from
  real *held-out* images, test and validation, to their nearest training image: closer than
  that is suspicious); and the profile: the share of samples under several such quantiles,
  which compares the samples' distances with real unseen faces' as whole distributions.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance


class _Precomputed(nn.Module):
    """A 'feature extractor' for torchmetrics that receives features already computed."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def fid(real: Tensor, fake: Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N_r, D) and (N_f, D)."""
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"FID needs >= 2 real and fake samples, got {len(real)} and {len(fake)}.")
    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kid(
    real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel (cubic polynomial) MMD between feature sets: (mean, std) over random subsets.

    The subset size is capped at the smaller set, so small evaluations still give a number.
    """
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(f"KID needs >= 2 real and fake samples, got {len(real)} and {len(fake)}.")
    with warnings.catch_warnings():  # "will save all extracted features": that is the point
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(
            feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=size
        )
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng():  # KID draws its subsets from the global RNG
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def accuracy(logits: Tensor, labels: Tensor, num_classes: int) -> tuple[float, list[float]]:
    """Overall accuracy (micro) and per-class accuracy (recall) of argmax predictions."""
    overall = MulticlassAccuracy(num_classes, average="micro")(logits, labels)
    per_class = MulticlassAccuracy(num_classes, average=None)(logits, labels)
    return float(overall), [float(v) for v in per_class]


def mean_pairwise_distance(features: Tensor) -> float:
    """Mean Euclidean distance over all pairs of rows of (N, D): 0 for one sample or copies."""
    if len(features) < 2:
        return 0.0
    return float(torch.pdist(features.double()).mean())


def nearest(queries: Tensor, references: Tensor, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """For each query row, (distance to, index of) its nearest reference row: two (N_q,)."""
    dists, idx = [], []
    for part in queries.split(chunk):
        d = torch.cdist(part.double(), references.double())  # (chunk, N_ref)
        value, index = d.min(dim=1)
        dists.append(value)
        idx.append(index)
    return torch.cat(dists), torch.cat(idx)


def memorisation_threshold(held_out_distances: Tensor, quantile: float = 0.01) -> float:
    """The `quantile` of real held-out images' distances to their nearest training image
    (`nearest(held_out, train)[0]`).

    Give it every held-out face there is: the 1% quantile of 300 faces is their third smallest
    distance, a noisy cut (on UTKFace one split's cut put 3.3% of the other split under it)."""
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"memorisation.quantile must be in [0, 1], got {quantile}.")
    return float(torch.quantile(held_out_distances.double(), quantile))


def memorisation_floor(test_distances: Tensor, val_distances: Tensor, quantile: float) -> Tensor:
    """Which real held-out faces lie under a cut estimated without them: (N_test + N_val,) bool,
    test faces first.

    Each split is scored under the `quantile` of the other split's distances (cross-fitted), so
    the floor is what faces the model never saw score under a cut estimated from this many faces
    (the samples' cut uses both splits: its share is the floor's in expectation, less noisy)."""
    return torch.cat(
        [
            test_distances < memorisation_threshold(val_distances, quantile),
            val_distances < memorisation_threshold(test_distances, quantile),
        ]
    )


def memorisation_profile(
    nn_distances: Tensor, held_out_distances: Tensor, quantiles: Sequence[float]
) -> list[dict[str, float]]:
    """The share of samples under each `quantile` of real held-out faces' distances to the
    training set: [{"quantile": q, "share": s}, ...].

    A generator whose samples are no nearer to its training images than new faces are scores
    about q at every q; copies pile up under the lowest. Unlike one share under one low
    quantile, this compares the two distributions where they hold many faces."""
    if not all(0.0 < q < 1.0 for q in quantiles):
        raise ValueError(
            f"memorisation.profile quantiles must be in (0, 1), got {list(quantiles)}."
        )
    if not len(quantiles):
        return []
    cuts = torch.quantile(held_out_distances.double(), torch.tensor(quantiles, dtype=torch.double))
    return [
        {"quantile": float(q), "share": memorised_share(nn_distances, float(cut))}
        for q, cut in zip(quantiles, cuts, strict=True)
    ]


def memorised_share(nn_distances: Tensor, threshold: float) -> float:
    """Share of samples whose nearest training image is closer than `threshold`."""
    return float((nn_distances < threshold).double().mean()) if len(nn_distances) else 0.0


def wilson_interval(count: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95% for z=1.96) of a share `count / n`; (0, 1) for n = 0.

    A memorised share of 5 in 300 is 1.7%, but its interval (0.7%, 3.8%) holds 1%: with the
    threshold at the 1% quantile of real held-out faces, only the interval says whether a model
    is nearer to its training images than real faces are."""
    if n == 0:
        return 0.0, 1.0
    p = count / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


def ratio_interval(
    count_a: int, n_a: int, count_b: int, n_b: int, z: float = 1.96
) -> list[float] | None:
    """Interval (95% for z=1.96) of the ratio of two independent shares (count_a / n_a) /
    (count_b / n_b), by the log method (Katz et al. 1978); None where a share is 0.

    A consistency ratio divides the samples' share by the real faces' share of one group, and
    the real share rests on ~100 test faces: a ratio of 1.06 from 255 of 300 samples and 80 of
    100 real faces lies anywhere in (0.95, 1.18).

    Where a share is 100% (no miss) the log method's width is 0, as if 30 of 30 proved a
    certainty: then every count gets half a hit and half a miss (Haldane's correction), and
    30/30 over 30/30 reads (0.94, 1.07) instead of (1, 1)."""
    if min(count_a, count_b, n_a, n_b) <= 0:
        return None
    if count_a == n_a or count_b == n_b:
        count_a, n_a, count_b, n_b = count_a + 0.5, n_a + 1, count_b + 0.5, n_b + 1
    pa, pb = count_a / n_a, count_b / n_b
    half = z * ((1 - pa) / count_a + (1 - pb) / count_b) ** 0.5
    centre = math.log(pa / pb)
    return [math.exp(centre - half), math.exp(centre + half)]


def memorisation(nn_distances: Tensor, threshold: float) -> dict[str, Any]:
    """The memorised share of samples (nearer to a training image than `threshold`), their
    count and the share's 95% Wilson interval."""
    count = int((nn_distances < threshold).sum())
    return {
        "memorised_share": memorised_share(nn_distances, threshold),
        "memorised_count": count,
        "memorised_ci95": list(wilson_interval(count, len(nn_distances))),
    }


def per_class_subset(labels: Tensor, n_per_class: dict[int, int]) -> Tensor:
    """Indices of the first n_per_class[c] rows of each class c (a fixed, reproducible subset)."""
    keep = [torch.nonzero(labels == c).flatten()[:n] for c, n in n_per_class.items()]
    return torch.cat(keep) if keep else torch.zeros(0, dtype=torch.long)


def group_metrics(
    *,
    fake_logits: Tensor,
    fake_features: Tensor,
    fake_labels: Tensor,
    real_logits: Tensor,
    real_features: Tensor,
    real_labels: Tensor,
    nn_distances: Tensor,
    class_names: Sequence[str],
    threshold: float,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    floor_features: Tensor | None = None,
    floor_labels: Tensor | None = None,
    floor_memorised: Tensor | None = None,
    floor_memorised_labels: Tensor | None = None,
) -> dict:
    """Every metric, overall and per class, as a JSON-able dict (see evaluate.py's metrics.json).

    real_* are the real test split; nn_distances (N_fake,) the distance of each sample to its
    nearest training image (`nearest`), for the memorisation share. floor_* (optional) are real
    faces disjoint from the test split (e.g. the validation split): FID/KID between them and the
    test split, with as many per class as were generated, are reported as `*_floor`.
    floor_memorised (optional, (M,) bool, with floor_memorised_labels) marks the real held-out
    faces under a memorisation cut estimated without them (`memorisation_floor`): their share is
    `memorised_share_floor`, overall and per class.
    """
    k = len(class_names)
    real_acc, real_per_class = accuracy(real_logits, real_labels, k)
    fake_acc, fake_per_class = accuracy(fake_logits, fake_labels, k)

    def realism(real: Tensor, fake: Tensor) -> dict[str, float | None]:
        if min(len(real), len(fake)) < 2:  # a class too small to fit a distribution
            return {"fid": None, "kid_mean": None, "kid_std": None}
        kid_mean, kid_std = kid(real, fake, kid_subsets, kid_subset_size)
        return {"fid": fid(real, fake), "kid_mean": kid_mean, "kid_std": kid_std}

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b is not None and b > 0 else None

    def consistency_interval(fake: Tensor, real: Tensor) -> list[float] | None:
        """The consistency ratio's 95% interval, from the two sets' hit counts (`fake` and
        `real` are one group's, or all, rows of the logits' argmax == label tests)."""
        return ratio_interval(int(fake.sum()), len(fake), int(real.sum()), len(real))

    fake_hits = fake_logits.argmax(dim=1) == fake_labels
    real_hits = real_logits.argmax(dim=1) == real_labels

    if floor_features is not None and floor_labels is not None:
        wanted = {c: int((fake_labels == c).sum()) for c in range(k)}
        keep = per_class_subset(floor_labels, wanted)
        floor_features, floor_labels = floor_features[keep], floor_labels[keep]

    def floor(real: Tensor, mask: Tensor | None) -> dict[str, float | None]:
        if floor_features is None or floor_labels is None:
            return {}
        other = floor_features if mask is None else floor_features[floor_labels == mask]
        values = realism(real, other)
        if floor_memorised is not None and floor_memorised_labels is not None:
            under = (
                floor_memorised if mask is None else floor_memorised[floor_memorised_labels == mask]
            )
            values["memorised_share"] = float(under.double().mean()) if len(under) else None
        return {f"{key}_floor": v for key, v in values.items()}

    out: dict = {
        "class_consistency": fake_acc,
        "real_accuracy": real_acc,
        "consistency_ratio": ratio(fake_acc, real_acc),
        "consistency_ratio_ci95": consistency_interval(fake_hits, real_hits),
        **realism(real_features, fake_features),
        **floor(real_features, None),
        "diversity": mean_pairwise_distance(fake_features),
        "real_diversity": mean_pairwise_distance(real_features),
        **memorisation(nn_distances, threshold),
        "memorisation_threshold": threshold,
        "n_generated": len(fake_labels),
        "n_real": len(real_labels),
        "per_class": {},
    }
    for c, name in enumerate(class_names):
        fake_c, real_c = fake_labels == c, real_labels == c
        out["per_class"][name] = {
            "class_consistency": fake_per_class[c],
            "real_accuracy": real_per_class[c],
            "consistency_ratio": ratio(fake_per_class[c], real_per_class[c]),
            "consistency_ratio_ci95": consistency_interval(fake_hits[fake_c], real_hits[real_c]),
            **realism(real_features[real_c], fake_features[fake_c]),
            **floor(real_features[real_c], c),
            "diversity": mean_pairwise_distance(fake_features[fake_c]),
            "real_diversity": mean_pairwise_distance(real_features[real_c]),
            **memorisation(nn_distances[fake_c], threshold),
            "n_generated": int(fake_c.sum()),
            "n_real": int(real_c.sum()),
        }
    add_ratios(out)
    for per in out["per_class"].values():
        add_ratios(per)
    return out


def add_ratios(row: dict) -> None:
    """fid_ratio = fid / fid_floor and diversity_ratio = diversity / real_diversity, in place."""
    if row.get("fid_floor"):
        row["fid_ratio"] = row["fid"] / row["fid_floor"] if row.get("fid") is not None else None
    if row.get("real_diversity"):
        row["diversity_ratio"] = row["diversity"] / row["real_diversity"]
