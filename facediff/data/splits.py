"""Deterministic, class-stratified train/val/test splits over duplicate groups."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

SPLIT_NAMES = ("train", "val", "test")


def check_fractions(fractions: Mapping[str, Any] | None) -> dict[str, float]:
    """Validate ``{train, val, test}`` fractions (missing keys count as 0)."""
    example = "split={train: 0.8, val: 0.1, test: 0.1}"
    if fractions is None:
        fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    if not isinstance(fractions, Mapping):
        raise ValueError(f"`split` must be a mapping like {example}, got {fractions!r}.")
    unknown = sorted(set(map(str, fractions)) - set(SPLIT_NAMES))
    if unknown:
        raise ValueError(
            f"Unknown split name(s) {unknown}. Fix: use only train, val and test, e.g. {example}."
        )
    values: dict[str, float] = {}
    for name in SPLIT_NAMES:
        value = fractions.get(name, 0.0)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not (math.isfinite(value) and value >= 0)
        ):
            raise ValueError(
                f"Split fraction {name}={value!r} is invalid. Fix: use numbers >= 0 that sum "
                f"to 1, e.g. {example}."
            )
        values[name] = float(value)
    total = sum(values.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(
            f"Split fractions {values} sum to {total:g}, not 1. Fix: rescale them, e.g. {example}."
        )
    if values["train"] == 0:
        raise ValueError(f"The train fraction is 0, so nothing would be trained on. Fix: {example}")
    return values


def allocate(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Split ``n`` groups into per-split counts (largest remainder), then make sure that every
    split with a positive fraction gets at least one group when there are enough groups."""
    fractions = {name: float(fractions.get(name, 0.0)) for name in SPLIT_NAMES}
    exact = {name: n * fractions[name] for name in SPLIT_NAMES}
    counts = {name: math.floor(exact[name]) for name in SPLIT_NAMES}
    by_remainder = sorted(SPLIT_NAMES, key=lambda s: counts[s] - exact[s])  # stable: ties in order
    for name in by_remainder[: n - sum(counts.values())]:
        counts[name] += 1
    wanted = [name for name in SPLIT_NAMES if fractions[name] > 0]
    if n >= len(wanted):
        for name in wanted:
            if counts[name] == 0:
                donor = max(SPLIT_NAMES, key=lambda s: counts[s])
                counts[donor] -= 1
                counts[name] += 1
    return counts


def split_indices(
    labels: Sequence[int],
    groups: Sequence[int],
    fractions: Mapping[str, Any],
    seed: int,
) -> dict[str, list[int]]:
    """Assign every item to train/val/test.

    Items sharing a group id (byte-identical copies) always land in the same split. Groups are
    stratified by class (a group's class is its most common label). The result depends only on
    the inputs and ``seed``; the item indices of each split are returned sorted.
    """
    if len(labels) != len(groups):
        raise ValueError(f"labels ({len(labels)}) and groups ({len(groups)}) differ in length.")
    values = check_fractions(fractions)
    members: dict[int, list[int]] = {}
    for item, group in enumerate(groups):
        members.setdefault(group, []).append(item)
    groups_by_class: dict[int, list[int]] = {}
    for group, items in members.items():
        label = Counter(labels[i] for i in items).most_common(1)[0][0]
        groups_by_class.setdefault(label, []).append(group)
    rng = np.random.default_rng(seed)
    result: dict[str, list[int]] = {name: [] for name in SPLIT_NAMES}
    for label in sorted(groups_by_class):
        class_groups = sorted(groups_by_class[label], key=lambda g: members[g][0])
        order = rng.permutation(len(class_groups))
        counts = allocate(len(class_groups), values)
        start = 0
        for name in SPLIT_NAMES:
            for position in order[start : start + counts[name]]:
                result[name].extend(members[class_groups[position]])
            start += counts[name]
    return {name: sorted(items) for name, items in result.items()}


def content_digest(rows: Sequence[int], labels: Sequence[int], digests: Sequence[str]) -> str:
    """A hash of the content (per-file digests) and labels of the given index rows."""
    digest = hashlib.blake2b(digest_size=12)
    for row, label in sorted(zip(rows, labels, strict=True)):
        digest.update(f"{digests[row]}:{label}\n".encode())
    return digest.hexdigest()
