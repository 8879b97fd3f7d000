"""Stratified, deterministic, duplicate-aware splits."""

from __future__ import annotations

from collections import Counter

import pytest

from facediff.data.splits import allocate, check_fractions, split_indices

FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def _labels(counts: list[int]) -> list[int]:
    return [label for label, n in enumerate(counts) for _ in range(n)]


def test_partition_and_stratification() -> None:
    labels = _labels([100, 50, 30])
    parts = split_indices(labels, list(range(len(labels))), FRACTIONS, seed=0)
    everything = sorted(parts["train"] + parts["val"] + parts["test"])
    assert everything == list(range(len(labels)))
    per_split = {name: Counter(labels[i] for i in items) for name, items in parts.items()}
    assert per_split["train"] == {0: 80, 1: 40, 2: 24}
    assert per_split["val"] == {0: 10, 1: 5, 2: 3}
    assert per_split["test"] == {0: 10, 1: 5, 2: 3}


def test_same_seed_same_split_other_seed_differs() -> None:
    labels = _labels([40, 40])
    groups = list(range(80))
    a = split_indices(labels, groups, FRACTIONS, seed=1)
    assert a == split_indices(labels, groups, FRACTIONS, seed=1)
    b = split_indices(labels, groups, FRACTIONS, seed=2)
    assert a["val"] != b["val"] or a["test"] != b["test"]


def test_duplicate_groups_never_straddle() -> None:
    labels = _labels([30, 30])
    groups = [i // 3 for i in range(60)]  # every group has three copies
    parts = split_indices(labels, groups, FRACTIONS, seed=5)
    split_of_group: dict[int, set[str]] = {}
    for name, items in parts.items():
        for i in items:
            split_of_group.setdefault(groups[i], set()).add(name)
    assert all(len(names) == 1 for names in split_of_group.values())
    assert all(parts[name] for name in parts)


@pytest.mark.parametrize("n", [3, 4, 5])
def test_tiny_classes_reach_every_split(n: int) -> None:
    labels = _labels([n, 50])
    parts = split_indices(labels, list(range(len(labels))), FRACTIONS, seed=0)
    for name in ("train", "val", "test"):
        assert any(labels[i] == 0 for i in parts[name]), name


def test_zero_fraction_split_stays_empty() -> None:
    labels = _labels([10, 10])
    parts = split_indices(labels, list(range(20)), {"train": 0.9, "val": 0.1}, seed=0)
    assert parts["test"] == [] and len(parts["val"]) == 2


def test_allocate_counts() -> None:
    assert allocate(10, FRACTIONS) == {"train": 8, "val": 1, "test": 1}
    assert allocate(3, FRACTIONS) == {"train": 1, "val": 1, "test": 1}
    assert allocate(2, FRACTIONS)["train"] >= 1
    assert allocate(1, FRACTIONS) == {"train": 1, "val": 0, "test": 0}
    assert allocate(7, {"train": 0.5, "val": 0.5}) == {"train": 4, "val": 3, "test": 0}


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ({"train": 0.8, "val": 0.1}, "sum to 0.9, not 1"),
        ({"train": 1.2, "val": -0.2}, "val=-0.2 is invalid"),
        ({"train": 0.8, "valid": 0.2}, "Unknown split name"),
        ({"train": 0.0, "val": 0.5, "test": 0.5}, "train fraction is 0"),
        ({"train": "most"}, "train='most' is invalid"),
    ],
)
def test_bad_fractions(fractions: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        check_fractions(fractions)
    assert "Fix" in str(info.value)
