"""FaceDataModule end to end on tiny fixtures, its errors, and the balanced sampler under DDP."""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

import facediff.data.index as index_module
from facediff.data import FaceDataModule
from facediff.data.balanced_sampler import BalancedSampler
from facediff.data.demo import DEMO_CLASSES

try:
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
except ImportError:  # older Lightning releases kept it here
    from lightning.pytorch.overrides.distributed import DistributedSamplerWrapper

RACES = {"white": 0, "black": 1, "asian": 2}


def make(root: Path, tmp_path: Path, **kwargs) -> FaceDataModule:
    options = {
        "layout": "utkface",
        "classes": RACES,
        "image_size": 16,
        "batch_size": 4,
        "num_workers": 0,
        "cache_dir": str(tmp_path / "cache"),
        **kwargs,
    }
    return FaceDataModule(root=str(root), **options)


def test_class_names_known_before_setup(utk_root: Path, folder_root: Path, tmp_path: Path) -> None:
    assert make(utk_root, tmp_path).class_names == ["white", "black", "asian"]
    assert make(utk_root, tmp_path, classes=None).num_classes == 5
    ages = make(utk_root, tmp_path, attribute="age", classes={"kid": [0, 18], "adult": [18, 99]})
    assert ages.class_names == ["kid", "adult"]
    folders = make(folder_root, tmp_path, layout="folder", classes=None)
    assert folders.class_names == ["a", "b", "c"]
    picked = make(folder_root, tmp_path, layout="folder", classes=["c", "a"])
    assert picked.class_names == ["c", "a"]
    demo = make(tmp_path / "not-yet", tmp_path, layout="folder", classes=None, demo={"size": 16})
    assert demo.class_names == list(DEMO_CLASSES) and not (tmp_path / "not-yet").exists()


def test_utkface_end_to_end(utk_root: Path, tmp_path: Path, caplog) -> None:
    dm = make(utk_root, tmp_path, augment={"hflip": 0.5, "crop_scale": [0.8, 1.0]})
    with caplog.at_level(logging.INFO, logger="facediff.data"):
        dm.prepare_data()
        dm.setup("fit")
        dm.setup("test")  # idempotent: no second summary
    summaries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Data:")]
    assert len(summaries) == 1
    assert "malformed names: 5" in summaries[0] and "white" in summaries[0]
    sizes = {name: len(getattr(dm, f"{name}_set")) for name in ("train", "val", "test")}
    assert sizes == {"train": 12, "val": 3, "test": 3}  # 6 per class -> 4 / 1 / 1
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert labels.shape == (4,) and labels.dtype == torch.int64
    val = list(dm.val_dataloader())
    assert sorted(torch.cat([y for _, y in val]).tolist()) == [0, 1, 2]
    assert torch.equal(val[0][0], next(iter(dm.val_dataloader()))[0])


def test_loader_options(utk_root: Path, tmp_path: Path) -> None:
    dm = make(utk_root, tmp_path, batch_size=12, eval_batch_size=2, balanced=True)
    dm.setup("fit")
    train = dm.train_dataloader()
    assert not train.drop_last  # 12 training items: dropping would leave no batch
    assert isinstance(train.sampler, BalancedSampler) and len(train.sampler) == 12
    assert dm.val_dataloader().batch_size == 2
    dm2 = make(utk_root, tmp_path, batch_size=5)
    dm2.setup("fit")
    assert dm2.train_dataloader().drop_last


def test_demo_through_folder_path(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    dm = make(root, tmp_path, layout="folder", classes=None, demo={"n_per_class": 10, "size": 24})
    dm.prepare_data()
    assert len(list((root / "hat").glob("*.png"))) == 10
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 16, 16) and set(labels.tolist()) <= {0, 1, 2}
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == 30
    for row, label in zip(dm.train_set.rows, dm.train_set.targets, strict=True):
        assert dm.index.relpaths[row].split("/")[0] == dm.class_names[label]


def test_cache_hit_on_second_setup(utk_root: Path, tmp_path: Path, monkeypatch) -> None:
    first = make(utk_root, tmp_path)
    first.prepare_data()
    first.setup("fit")
    cache_files = list((tmp_path / "cache").glob("*.pt"))
    assert len(cache_files) == 1
    stamp = cache_files[0].stat().st_mtime_ns
    monkeypatch.setattr(index_module, "decode_files", lambda *a, **k: pytest.fail("re-decoded"))
    second = make(utk_root, tmp_path)
    second.prepare_data()
    second.setup("fit")
    assert cache_files[0].stat().st_mtime_ns == stamp
    assert second.train_set.rows == first.train_set.rows
    assert torch.equal(second.train_set.images, first.train_set.images)


def test_without_image_cache(utk_root: Path, tmp_path: Path) -> None:
    dm = make(utk_root, tmp_path, cache_images=False)
    dm.setup("fit")
    assert dm.train_set.images is None and dm.train_set.paths is not None
    images, _ = next(iter(dm.val_dataloader()))
    cached = make(utk_root, tmp_path)
    cached.setup("fit")
    assert torch.allclose(images, next(iter(cached.val_dataloader()))[0])


def test_duplicates_dropped_or_kept_together(tmp_path: Path, write_image) -> None:
    root = tmp_path / "faces"
    for c, name in enumerate(("a", "b")):
        for k in range(6):
            write_image(root / name / f"{k}.jpg", seed=10 * c + k)
    for k in range(6, 9):  # three more copies of a/0.jpg inside class a
        shutil.copy(root / "a" / "0.jpg", root / "a" / f"{k}.jpg")
    shutil.copy(root / "a" / "1.jpg", root / "b" / "conflict.jpg")  # same bytes, other class
    deduped = make(root, tmp_path, layout="folder", classes=None)
    deduped.setup("fit")
    used = [deduped.train_set, deduped.val_set, deduped.test_set]
    names = {deduped.index.relpaths[r] for d in used for r in d.rows}
    assert len(names) == 11 and "a/0.jpg" in names  # one copy kept, first by name
    assert not names & {"a/1.jpg", "b/conflict.jpg", "a/6.jpg", "a/7.jpg", "a/8.jpg"}

    kept_all = make(root, tmp_path, layout="folder", classes=None, dedupe=False)
    kept_all.setup("fit")
    splits = [set(d.rows) for d in (kept_all.train_set, kept_all.val_set, kept_all.test_set)]
    assert sum(map(len, splits)) == 16
    for copies in ({"a/0.jpg", "a/6.jpg", "a/7.jpg", "a/8.jpg"}, {"a/1.jpg", "b/conflict.jpg"}):
        rows = {i for i, rel in enumerate(kept_all.index.relpaths) if rel in copies}
        assert len(rows) == len(copies)
        assert sum(bool(rows & split) for split in splits) == 1  # never straddles splits


def test_missing_root(tmp_path: Path) -> None:
    dm = make(tmp_path / "missing", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"susanqq\.github\.io/UTKFace") as info:
        dm.setup("fit")
    assert "python train.py experiment=demo" in str(info.value)
    folder = make(tmp_path / "missing", tmp_path, layout="folder", classes=None)
    with pytest.raises(FileNotFoundError, match="root/<class>"):
        _ = folder.class_names


def test_unknown_or_unusable_classes_list_what_exists(
    folder_root: Path, utk_root: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=r"'zzz' has no folder.*a: 8, b: 6, c: 5"):
        make(folder_root, tmp_path, layout="folder", classes=["a", "zzz"]).setup("fit")
    for path in (folder_root / "c").iterdir():
        path.write_bytes(b"broken")
    with pytest.raises(ValueError, match=r"\['c'\] have no usable image.*a: 8, b: 6, c: 0"):
        make(folder_root, tmp_path, layout="folder", classes=None).setup("fit")
    with pytest.raises(ValueError, match=r"match no image.*0 White: 6"):
        make(utk_root, tmp_path, attribute="age", classes={"old": [90, 120]}).setup("fit")


def test_nothing_usable(tmp_path: Path) -> None:
    (tmp_path / "bad" / "x").mkdir(parents=True)
    (tmp_path / "bad" / "x" / "0.jpg").write_bytes(b"nope")
    with pytest.raises(ValueError, match="No usable image at all"):
        make(tmp_path / "bad", tmp_path, layout="folder", classes=None).setup("fit")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layout": "flat"}, "Unknown data layout"),
        ({"layout": "folder", "classes": {"a": 0}}, "list of sub-folder names"),
        ({"classes": ["white"]}, "mapping of class name"),
        ({"demo": {"size": 16}}, "demo data uses the folder layout"),
        ({"layout": "folder", "classes": ["cats"], "demo": {}}, "Demo classes \\['cats'\\]"),
        ({"image_size": 32, "load_size": 16}, "load_size=16 is smaller"),
        ({"split": {"train": 0.5}}, "sum to 0.5"),
        ({"augment": {"hflip": 2}}, "hflip=2"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_constructor_errors(utk_root: Path, tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(utk_root, tmp_path, **kwargs)


def _positions(wrapper: DistributedSamplerWrapper) -> list[int]:
    return list(DistributedSampler.__iter__(wrapper))


def test_balanced_sampler_under_ddp_wrapper() -> None:
    labels = [0] * 600 + [1] * 200 + [2] * 100
    samplers = [BalancedSampler(labels, seed=7) for _ in range(2)]
    wrappers = [
        DistributedSamplerWrapper(sampler, num_replicas=2, rank=rank)
        for rank, sampler in enumerate(samplers)
    ]
    for epoch in (0, 1):
        for wrapper in wrappers:
            wrapper.set_epoch(epoch)
        positions = [_positions(w) for w in wrappers]
        assert not set(positions[0]) & set(positions[1])
        assert sorted(positions[0] + positions[1]) == list(range(len(labels)))
        drawn = [list(w) for w in wrappers]
        reference = BalancedSampler(labels, seed=7)
        reference.set_epoch(epoch)
        full = list(reference)
        for rank in (0, 1):
            assert drawn[rank] == [full[p] for p in positions[rank]]
        counts = Counter(labels[i] for i in drawn[0] + drawn[1])
        assert all(0.27 < counts[c] / len(labels) < 0.4 for c in range(3)), counts
        if epoch == 0:
            first_epoch = drawn
    assert drawn != first_epoch  # set_epoch reaches the inner sampler: fresh draws
