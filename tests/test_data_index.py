"""Index building: decoding, unreadable files, the on-disk cache and duplicate handling."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import facediff.data.index as index_module
from facediff.data.duplicates import resolve_duplicates
from facediff.data.index import build_index


def _relpaths(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))


def _corrupt(root: Path, write_image) -> None:
    good = write_image(root / "truncated.jpg", seed=77, size=32).read_bytes()
    (root / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "garbage.jpg").write_bytes(b"this is not a jpeg at all" * 10)


def test_unreadable_files_skipped_with_one_warning(
    tmp_path: Path, write_image, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "imgs"
    for i in range(4):
        write_image(root / f"ok{i}.jpg", seed=i)
    _corrupt(root, write_image)
    with caplog.at_level(logging.WARNING, logger="facediff.data"):
        index = build_index(root, "folder", _relpaths(root), cache_dir=None, load_size=16)
    assert index.unreadable == ["garbage.jpg", "truncated.jpg"]
    assert index.relpaths == [f"ok{i}.jpg" for i in range(4)]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "Skipped 2 unreadable" in warnings[0].getMessage()
    assert "garbage.jpg" in warnings[0].getMessage()


def test_cached_pixels_and_sizes(tmp_path: Path, write_image) -> None:
    root = tmp_path / "imgs"
    write_image(root / "square.jpg", seed=1, size=24)
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, 10:30] = (255, 0, 0)  # the centred square is pure red, the sides black
    Image.fromarray(wide).save(root / "wide.png")
    index = build_index(root, "folder", ["square.jpg", "wide.png"], cache_dir=None, load_size=12)
    assert index.images is not None and index.images.dtype == torch.uint8
    assert index.images.shape == (2, 3, 12, 12)
    assert index.sizes.tolist() == [[24, 24], [40, 20]]
    red = index.images[1].float()
    assert red[0].min() > 200 and red[1:].max() < 60  # centre-cropped, not squashed
    no_pixels = build_index(
        root, "folder", ["square.jpg"], cache_dir=None, load_size=12, cache_images=False
    )
    assert no_pixels.images is None and no_pixels.load_size is None


def test_second_run_hits_cache(tmp_path: Path, utk_root: Path, monkeypatch) -> None:
    relpaths = sorted(p.name for p in utk_root.glob("*_*_*_*.jpg*"))[:10]
    cache = tmp_path / "cache"
    first = build_index(utk_root, "utkface", relpaths, cache_dir=cache, load_size=16)
    assert not first.from_cache and first.cache_path is not None and first.cache_path.is_file()

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite a valid cache")

    monkeypatch.setattr(index_module, "decode_files", no_decoding)
    second = build_index(utk_root, "utkface", relpaths, cache_dir=cache, load_size=16)
    assert second.from_cache and second.cache_path == first.cache_path
    assert second.relpaths == first.relpaths and second.digests == first.digests
    assert torch.equal(second.images, first.images)
    # a different load size or image caching choice is a different cache entry
    with pytest.raises(AssertionError, match="decoded again"):
        build_index(utk_root, "utkface", relpaths, cache_dir=cache, load_size=20)
    with pytest.raises(AssertionError, match="decoded again"):
        build_index(
            utk_root, "utkface", relpaths, cache_dir=cache, load_size=16, cache_images=False
        )


def test_changed_file_invalidates_cache(tmp_path: Path, write_image) -> None:
    root = tmp_path / "imgs"
    for i in range(3):
        write_image(root / f"{i}.jpg", seed=i)
    cache = tmp_path / "cache"
    first = build_index(root, "folder", _relpaths(root), cache_dir=cache, load_size=8)
    write_image(root / "1.jpg", seed=50, size=30)
    os.utime(root / "1.jpg", ns=(1, 1))
    second = build_index(root, "folder", _relpaths(root), cache_dir=cache, load_size=8)
    assert not second.from_cache and second.cache_path != first.cache_path
    assert second.digests[1] != first.digests[1]


def test_damaged_cache_is_rebuilt(tmp_path: Path, write_image) -> None:
    root = tmp_path / "imgs"
    write_image(root / "0.jpg", seed=0)
    cache = tmp_path / "cache"
    first = build_index(root, "folder", ["0.jpg"], cache_dir=cache, load_size=8)
    first.cache_path.write_bytes(b"junk")
    again = build_index(root, "folder", ["0.jpg"], cache_dir=cache, load_size=8)
    assert not again.from_cache and again.digests == first.digests


def test_identical_bytes_share_a_digest(tmp_path: Path, write_image) -> None:
    root = tmp_path / "imgs"
    write_image(root / "a.jpg", seed=3)
    shutil.copy(root / "a.jpg", root / "b.jpg")
    write_image(root / "c.jpg", seed=4)
    index = build_index(root, "folder", ["a.jpg", "b.jpg", "c.jpg"], cache_dir=None, load_size=8)
    assert index.digests[0] == index.digests[1] != index.digests[2]


def test_resolve_duplicates_policy() -> None:
    relpaths = ["a", "b", "c", "d", "e", "f"]
    digests = ["x", "y", "x", "z", "z", "w"]  # {a, c} same label; {d, e} conflicting
    labels = [0, 1, 0, 1, 2, 2]
    kept = resolve_duplicates(relpaths, labels, digests, dedupe=True)
    assert [relpaths[i] for i in kept.keep] == ["a", "b", "f"]
    assert kept.n_duplicate_groups == 2 and kept.n_copies_removed == 1
    assert kept.conflicting == [["d", "e"]]
    assert len(set(kept.groups)) == 3
    everything = resolve_duplicates(relpaths, labels, digests, dedupe=False)
    assert everything.keep == [0, 1, 2, 3, 4, 5]
    groups = everything.groups
    assert groups[0] == groups[2] and groups[3] == groups[4] and len(set(groups)) == 4
    assert everything.conflicting == [["d", "e"]] and not everything.conflicting_dropped


def test_first_copy_by_name_is_kept() -> None:
    kept = resolve_duplicates(["z", "m", "a"], [1, 1, 1], ["h", "h", "h"])
    assert kept.keep == [2]


def test_decoding_leaves_the_global_random_stream_alone(tmp_path: Path, write_image) -> None:
    """A training run draws its noise from the global stream after the index is built: a cache
    miss (decoding) and a cache hit must leave it in the same state, or a run's result would
    depend on whether its data had been indexed before."""
    from facediff.evaluation.images import iter_images

    root = tmp_path / "imgs"
    for i in range(3):
        write_image(root / f"ok{i}.jpg", seed=i)
    state = torch.get_rng_state()
    index = build_index(root, "folder", _relpaths(root), cache_dir=tmp_path / "c", load_size=16)
    assert not index.from_cache
    assert torch.equal(torch.get_rng_state(), state)
    dataset = torch.utils.data.TensorDataset(torch.zeros(3, 3, 4, 4), torch.zeros(3))
    assert len(list(iter_images(dataset, batch_size=2))) == 2
    assert torch.equal(torch.get_rng_state(), state)
