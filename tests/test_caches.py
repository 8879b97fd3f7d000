"""Caches: atomic writes (two processes at once), damaged or mismatched files rebuilt with a
warning naming them, nothing from a cache file ever run, and keys that cover every input."""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from facediff import caches
from facediff.atomic import (
    atomic_folder,
    atomic_path,
    atomic_save,
    atomic_write_text,
    remove_stale_temps,
)
from facediff.data.datamodule import FaceDataModule
from facediff.data.demo import demo_is_complete, write_demo_dataset
from facediff.data.index import build_index
from facediff.evaluation import classifier as classifier_module
from facediff.evaluation.classifier import (
    FaceClassifier,
    cache_key,
    classifier_for,
    save_classifier,
    training_data_fields,
)
from facediff.evaluation.features import FeatureSpace, cached
from facediff.jobs import scoring

DEMO = {"n_per_class": 3, "size": 16, "seed": 0}


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _warned_about(caplog: pytest.LogCaptureFixture, path: Path) -> bool:
    return any(r.levelno == logging.WARNING and str(path) in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ two writers at once
def _writer(worker: int, root: str, cache: str, barrier, results) -> None:
    """One of two processes: the demo data, the image index and a hammered torch cache, each
    started at the same moment as the other process's."""
    try:
        barrier.wait(60)
        write_demo_dataset(root, **DEMO)
        barrier.wait(60)
        relpaths = sorted(p.relative_to(root).as_posix() for p in Path(root).rglob("*.png"))
        index = build_index(root, "folder", relpaths, cache_dir=cache, load_size=8)
        barrier.wait(60)
        target = Path(cache) / "hammered.pt"
        torn = 0
        for _ in range(25):
            atomic_save({"worker": worker, "x": torch.full((128, 512), worker)}, target)
            got = torch.load(target, weights_only=True)
            torn += not bool((got["x"] == got["worker"]).all())
        results.put((worker, "ok", index.digests, torn))
    except BaseException as exc:  # reported to the test, which fails with it
        results.put((worker, "error", f"{type(exc).__name__}: {exc}", 0))


def test_two_processes_write_the_same_caches_at_once(tmp_path: Path) -> None:
    root, cache = tmp_path / "demo", tmp_path / "cache"
    ctx = multiprocessing.get_context("spawn")  # fork after torch started threads can hang
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_writer, args=(w, str(root), str(cache), barrier, results))
        for w in (1, 2)
    ]
    for proc in procs:
        proc.start()
    outcomes = sorted(results.get(timeout=240) for _ in procs)
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert [o[1] for o in outcomes] == ["ok", "ok"], outcomes
    assert outcomes[0][2] == outcomes[1][2] and len(outcomes[0][2]) == 9  # same index
    assert [o[3] for o in outcomes] == [0, 0]  # never read half a file
    assert demo_is_complete(root, **DEMO)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "demo"]  # no temp folders
    names = sorted(p.name for p in cache.iterdir())
    assert len(names) == 2 and names[0] == "hammered.pt" and names[1].startswith("index-")
    hammered = torch.load(cache / "hammered.pt", weights_only=True)
    assert bool((hammered["x"] == hammered["worker"]).all())


# ------------------------------------------------------------------ the atomic helpers
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "c.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["c.txt"]


def test_only_old_temps_of_killed_writers_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "c.pt"
    old, fresh = tmp_path / ".c.pt.tmp-dead", tmp_path / ".c.pt.tmp-alive"
    old.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(old, (time.time() - 7200,) * 2)
    assert remove_stale_temps(target) == 1
    assert not old.exists() and fresh.exists()


def test_folder_publish_keeps_a_finished_target_and_replaces_a_stale_one(tmp_path: Path) -> None:
    target = tmp_path / "out"

    def complete(folder: Path) -> bool:
        return (folder / "done").is_file()

    target.mkdir()
    (target / "leftover").write_text("partial")  # incomplete: replaced
    with atomic_folder(target, complete) as tmp:
        (tmp / "done").write_text("first")
    assert sorted(p.name for p in target.iterdir()) == ["done"]
    with atomic_folder(target, complete) as tmp:  # complete: the new copy is dropped
        (tmp / "done").write_text("second")
    assert (target / "done").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# ------------------------------------------------------------------ damaged caches
def test_truncated_index_cache_is_rebuilt_with_a_warning_naming_it(
    tmp_path: Path, write_image, caplog
) -> None:
    root = tmp_path / "imgs"
    write_image(root / "0.png", seed=0)
    first = build_index(root, "folder", ["0.png"], cache_dir=tmp_path / "c", load_size=8)
    _truncate(first.cache_path)
    with caplog.at_level(logging.WARNING):
        again = build_index(root, "folder", ["0.png"], cache_dir=tmp_path / "c", load_size=8)
    assert not again.from_cache and again.digests == first.digests
    assert _warned_about(caplog, first.cache_path)
    assert build_index(root, "folder", ["0.png"], cache_dir=tmp_path / "c", load_size=8).from_cache


def test_index_cache_of_other_inputs_is_rebuilt_with_a_warning(
    tmp_path: Path, write_image, caplog
) -> None:
    root = tmp_path / "imgs"
    write_image(root / "0.png", seed=0)
    first = build_index(root, "folder", ["0.png"], cache_dir=tmp_path / "c", load_size=8)
    payload = torch.load(first.cache_path, weights_only=True)
    torch.save({**payload, "key": "0" * 32}, first.cache_path)
    with caplog.at_level(logging.WARNING):
        again = build_index(root, "folder", ["0.png"], cache_dir=tmp_path / "c", load_size=8)
    assert not again.from_cache
    assert _warned_about(caplog, first.cache_path) and "key mismatch" in caplog.text


class _Payload:
    """Unpickling this would create a file: a weights_only load must refuse it."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def __reduce__(self):
        return (Path.touch, (self.flag,))


def test_feature_cache_truncated_foreign_or_code_carrying_is_recomputed(
    tmp_path: Path, caplog
) -> None:
    path, flag = tmp_path / "real.pt", tmp_path / "ran"
    calls = []

    def compute() -> dict[str, torch.Tensor]:
        calls.append(1)
        return {"f": torch.arange(6.0)}

    assert torch.equal(cached(path, "k1", compute)["f"], torch.arange(6.0))
    assert torch.equal(cached(path, "k1", compute)["f"], torch.arange(6.0)) and len(calls) == 1
    for damage in (
        lambda: _truncate(path),
        lambda: torch.save([1, 2], path),  # not a cache
        lambda: torch.save({"x": _Payload(flag)}, path),  # names code
    ):
        damage()
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert torch.equal(cached(path, "k1", compute)["f"], torch.arange(6.0))
        assert _warned_about(caplog, path)
    assert len(calls) == 4 and not flag.exists()
    cached(path, "k2", compute)  # other inputs: recomputed, not served
    assert len(calls) == 5


# ------------------------------------------------------------------ the classifier cache
@pytest.fixture
def tiny_dm(tmp_path: Path):
    def make(**overrides) -> FaceDataModule:
        settings = {"root": str(tmp_path / "demo"), "layout": "folder", "demo": DEMO,
                    "image_size": 8, "batch_size": 4, "num_workers": 0,
                    "cache_dir": str(tmp_path / "cache"), **overrides}  # fmt: skip
        dm = FaceDataModule(**settings)
        dm.prepare_data()
        dm.setup("fit")
        return dm

    return make


def test_classifier_cache_is_reused_rebuilt_when_damaged_and_keyed_by_settings(
    tiny_dm, tmp_path: Path, caplog, monkeypatch
) -> None:
    dm = tiny_dm()
    small = {"epochs": 1, "widths": [4], "lr": 1e-3, "seed": 0, "path": None}
    _, meta = classifier_for(dm, tmp_path / "cache", **small)
    file = tmp_path / "cache" / "classifiers" / f"classifier-{meta['key']}.pt"
    assert file.is_file()
    trained = []
    real_train = classifier_module.train_classifier

    def counting(*args, **kwargs):
        trained.append(kwargs)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(classifier_module, "train_classifier", counting)
    _, again = classifier_for(dm, tmp_path / "cache", **small)
    assert again["key"] == meta["key"] and trained == []  # loaded, not retrained
    _truncate(file)
    with caplog.at_level(logging.WARNING):
        classifier_for(dm, tmp_path / "cache", **small)
    assert len(trained) == 1 and _warned_about(caplog, file)
    save_classifier(file, FaceClassifier(3, [4]), {**meta, "key": "other"})
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        classifier_for(dm, tmp_path / "cache", **small)
    assert len(trained) == 2 and _warned_about(caplog, file)
    keys = {meta["key"]}
    for settings in ({"lr": 2e-3}, {"seed": 1}, {"widths": [8]}, {"epochs": 2}):
        keys.add(classifier_for(dm, tmp_path / "cache", **{**small, **settings})[1]["key"])
    assert len(keys) == 5


def test_training_run_and_evaluate_train_the_same_classifier(
    tiny_dm, tmp_path: Path, monkeypatch
) -> None:
    """The eval_metrics callback trains the classifier inside a training run (its seed in
    PL_GLOBAL_SEED, loader workers, a random stream in use); evaluate.py in a fresh process.
    Both must cache, under one key, the same weights, and leave the caller's stream alone."""
    settings = {"epochs": 1, "widths": [4], "lr": 1e-3, "seed": 0, "path": None}
    clf, meta = classifier_for(tiny_dm(), tmp_path / "evaluate", **settings)  # as evaluate.py
    monkeypatch.setenv("PL_GLOBAL_SEED", "42")  # as inside train.py
    torch.manual_seed(7)
    before = torch.get_rng_state()
    run_clf, run_meta = classifier_for(tiny_dm(num_workers=2), tmp_path / "run", **settings)
    assert torch.equal(torch.get_rng_state(), before)
    assert run_meta["key"] == meta["key"]
    for name, weight in clf.state_dict().items():
        assert torch.equal(run_clf.state_dict()[name], weight), name


def test_classifier_key_covers_the_training_data_and_loader(tiny_dm) -> None:
    def key(dm) -> str:
        return cache_key(training_data_fields(dm))

    base = key(tiny_dm())
    assert key(tiny_dm()) == base
    for change in (
        {"batch_size": 2},
        {"augment": {"hflip": 0.5}},
        {"balanced": True},
        {"load_size": 12},
        {"split": {"train": 0.6, "val": 0.2, "test": 0.2}, "seed": 5},
    ):
        assert key(tiny_dm(**change)) != base, change


def test_real_feature_key_covers_weights_file_and_load_size(monkeypatch, tmp_path: Path) -> None:
    paths: list[Path] = []
    monkeypatch.setattr(scoring, "cached", lambda path, key, compute: paths.append(path))
    dm = SimpleNamespace(image_size=8, load_size=10, split_digest=lambda split: split)

    def space(digest: str | None) -> FeatureSpace:
        return FeatureSpace("inception-v3", lambda x: x, weights_digest=digest)

    scoring.real_features(dm, None, "clf", space("a"), tmp_path)
    scoring.real_features(dm, None, "clf", space("b"), tmp_path)
    scoring.real_features(SimpleNamespace(**{**vars(dm), "load_size": 12}), None, "clf",
                          space("a"), tmp_path)  # fmt: skip
    assert len(set(paths)) == 3
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"one")
    first = caches.file_digest(weights)
    weights.write_bytes(b"two!")
    assert caches.file_digest(weights) != first
