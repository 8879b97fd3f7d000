"""Near-identical files (one photograph saved twice) never straddle the training split and the
held-out splits, and finding them leaves the training split exactly as drawn."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facediff.data import FaceDataModule
from facediff.data.audit import audit_dataset, format_report
from facediff.data.near_duplicates import (
    connected_groups,
    near_identical_pairs,
    separate_near_identical,
)
from facediff.data.splits import SPLIT_NAMES


def test_pairs_follow_the_rms_threshold_in_uint8_and_float() -> None:
    grey = torch.full((1, 3, 40, 40), 0.5)
    images = torch.cat([grey, grey + 0.05, grey + 0.2, torch.rand(1, 3, 40, 40)])  # RMS 0.05
    assert near_identical_pairs(images, 0.06) == [(0, 1)]
    assert near_identical_pairs(images, 0.04) == []
    as_uint8 = (images * 255).round().to(torch.uint8)
    assert near_identical_pairs(as_uint8, 0.06) == [(0, 1)]
    assert near_identical_pairs(images, 0.06, rows=[2, 3, 1, 0]) == [(2, 3)]  # positions in rows
    for bad in (-1.0, 0.0):
        with pytest.raises(ValueError, match="max_rms"):
            near_identical_pairs(images, bad)
    many = torch.cat([images] * 300)  # 1,200 images: pairs across chunks (chunk 1,024)
    assert len(near_identical_pairs(many, 0.06)) == len(near_identical_pairs(many, 0.06, chunk=7))


def test_groups_are_transitive_and_ordered() -> None:
    assert connected_groups(6, [(4, 5), (1, 2), (2, 3)]) == [[1, 2, 3], [4, 5]]
    assert connected_groups(3, []) == []


def test_held_out_copies_of_training_images_are_dropped_and_train_is_untouched() -> None:
    images = torch.rand(8, 3, 16, 16)
    images[5] = images[1]  # 1 (train) ~ 5 (test): the test copy goes
    images[6] = images[3]  # 3 (val) ~ 6 (test): both held out, into 3's split
    rows = {"train": [0, 1, 2], "val": [3, 4], "test": [5, 6, 7]}
    out, groups, changed = separate_near_identical(rows, images, 0.01)
    assert groups == [[1, 5], [3, 6]] and changed == 2
    assert out == {"train": [0, 1, 2], "val": [3, 4, 6], "test": [7]}


def write_faces(root: Path, copies: int) -> list[tuple[str, str]]:
    """Two classes of 20 distinct images, and `copies` re-saved, slightly noisy copies of
    class-a images (a JPEG of a PNG): (original, copy) names."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for k in range(20):
            pixels = rng.integers(0, 256, (8, 8, 3)).repeat(4, 0).repeat(4, 1).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{k:02d}.png")
    pairs = []
    for k in range(copies):
        pixels = np.asarray(Image.open(root / "a" / f"{k:02d}.png"), dtype=np.int16)
        noisy = np.clip(pixels + rng.integers(-3, 4, pixels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(root / "a" / f"{k:02d}_resaved.jpg", quality=95, subsampling=0)
        pairs.append((f"a/{k:02d}.png", f"a/{k:02d}_resaved.jpg"))
    return pairs


def split_of(dm: FaceDataModule) -> dict[str, str]:
    return {dm.index.relpaths[r]: name for name in SPLIT_NAMES for r in dm.eval_dataset(name).rows}


def test_datamodule_keeps_each_photograph_out_of_the_held_out_splits(
    tmp_path: Path, caplog
) -> None:
    pairs = write_faces(tmp_path / "faces", copies=8)
    options = dict(layout="folder", image_size=32, num_workers=0, cache_dir=str(tmp_path / "c"))
    split = {"train": 0.5, "val": 0.25, "test": 0.25}
    plain = FaceDataModule(root=str(tmp_path / "faces"), split=split, **options)
    plain.setup("fit")
    before = split_of(plain)
    straddle = [p for p in pairs if (before[p[0]] == "train") != (before[p[1]] == "train")]
    assert straddle  # without the setting, some photographs are in train and held out

    dm = FaceDataModule(root=str(tmp_path / "faces"), split=split, near_duplicates=0.06, **options)
    with caplog.at_level(logging.INFO, logger="facediff.data"):
        dm.setup("fit")
    assert f"({len(straddle)} held-out cop(ies) of training images dropped, " in caplog.text
    after = split_of(dm)
    for original, copy in pairs:
        in_train = [before[original] == "train", before[copy] == "train"]
        if sum(in_train) == 1:  # the held-out member is dropped, the training one stays
            assert {after.get(original), after.get(copy)} == {"train", None}
        else:  # both in train, or both held out: in one split
            assert after[original] == after[copy]
    assert dm.train_set.rows == plain.train_set.rows  # training batches do not change
    assert len(after) == len(before) - len(straddle)


def test_the_audit_lists_near_identical_pairs(tmp_path: Path) -> None:
    pairs = write_faces(tmp_path / "faces", copies=3)
    report = audit_dataset(tmp_path / "faces", "folder", num_workers=0)
    assert report.near_identical == pairs and not report.duplicate_groups
    assert re.search(r"near-identical +3  \(pairs", format_report(report))
    assert audit_dataset(tmp_path / "faces", "folder", 0, near_duplicates=None).near_identical == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"near_duplicates": 2.0}, "near_duplicates"),
        ({"near_duplicates": 0.6}, "different faces would count as one"),
        ({"near_duplicates": 0}, "near_duplicates"),
        ({"near_duplicates": "yes"}, "near_duplicates"),
        ({"near_duplicates": 0.06, "cache_images": False}, "cache_images=true"),
    ],
)
def test_bad_settings_name_the_fix(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FaceDataModule(root=str(tmp_path), layout="folder", **kwargs)


def test_a_data_config_without_the_key_keeps_its_old_split(tmp_path: Path) -> None:
    """evaluate.py rebuilds the data from a checkpoint's data config: one saved before
    data.near_duplicates existed must give the split its model was trained with."""
    from facediff.data.build import build_datamodule

    pairs = write_faces(tmp_path / "faces", copies=8)
    split = {"train": 0.5, "val": 0.25, "test": 0.25}
    config = dict(root=str(tmp_path / "faces"), layout="folder", image_size=32, num_workers=0,
                  cache_dir=str(tmp_path / "c"), split=split)  # fmt: skip
    old = build_datamodule(config)
    old.setup("test")
    assert old.near_duplicates is None
    held_out = set(split_of(old)) - {n for n, s in split_of(old).items() if s == "train"}
    assert any(copy in held_out or original in held_out for original, copy in pairs)
    assert len(split_of(old)) == 40 + len(pairs)  # nothing dropped
