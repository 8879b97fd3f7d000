"""Built-in synthetic demo faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import facediff.data.demo as demo
from facediff.data.demo import DEMO_CLASSES, MARKER_NAME, draw_demo_face, write_demo_dataset


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_layout_and_determinism(tmp_path: Path) -> None:
    a = write_demo_dataset(tmp_path / "a", n_per_class=5, size=32, seed=3)
    b = write_demo_dataset(tmp_path / "b", n_per_class=5, size=32, seed=3)
    files = _files(a)
    assert sorted(files) == [f"{c}/{i:04d}.png" for c in sorted(DEMO_CLASSES) for i in range(5)]
    assert files == _files(b)
    c = write_demo_dataset(tmp_path / "c", n_per_class=5, size=32, seed=4)
    assert _files(c) != files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temp leftovers


def test_complete_dataset_is_not_rewritten(tmp_path: Path, monkeypatch) -> None:
    root = write_demo_dataset(tmp_path / "demo", n_per_class=3, size=16)
    monkeypatch.setattr(demo, "draw_demo_face", lambda *a: pytest.fail("redrew a complete set"))
    assert write_demo_dataset(root, n_per_class=3, size=16) == root


def test_incomplete_or_changed_dataset_is_redone(tmp_path: Path) -> None:
    root = write_demo_dataset(tmp_path / "demo", n_per_class=3, size=16)
    reference = _files(root)
    (root / "hat" / "0002.png").unlink()  # as if interrupted
    write_demo_dataset(root, n_per_class=3, size=16)
    assert _files(root) == reference
    write_demo_dataset(root, n_per_class=2, size=16)  # new parameters: no stale files remain
    assert len(_files(root)) == 6
    assert '"n_per_class": 2' in (root / MARKER_NAME).read_text()


def test_refuses_to_overwrite_other_data(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "photo.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not a facediff demo dataset"):
        write_demo_dataset(tmp_path / "mine", n_per_class=2, size=16)


def test_classes_differ_only_by_their_feature() -> None:
    size, n = 32, 40
    stacks = {
        c: np.stack([np.asarray(draw_demo_face(c, i, size), np.float32) / 255 for i in range(n)])
        for c in DEMO_CLASSES
    }
    means = {c: s.mean(axis=0) for c, s in stacks.items()}
    for i, a in enumerate(DEMO_CLASSES):
        for b in DEMO_CLASSES[i + 1 :]:
            assert np.abs(means[a] - means[b]).mean() > 0.03, (a, b)
    luma = {c: s.mean(axis=3) for c, s in stacks.items()}
    crown, eyes, chin, centre = slice(3, 10), slice(13, 18), slice(19, 26), slice(10, 22)
    # a hat is one solid saturated colour over the top of the head
    hat_top = stacks["hat"][:, crown, 12:20]
    assert hat_top.std(axis=(1, 2)).mean() < 0.05
    for other in ("glasses", "beard"):
        assert stacks[other][:, crown, 12:20].std(axis=(1, 2)).mean() > 0.1
    # glasses darken the eye band, beards the lower face
    assert luma["glasses"][:, eyes, centre].mean() < luma["beard"][:, eyes, centre].mean() - 0.1
    assert luma["beard"][:, chin, centre].mean() < luma["hat"][:, chin, centre].mean() - 0.15
    # nuisance factors are shared: the background corner has the same statistics everywhere
    corner = {c: s[:, :3, :3].mean() for c, s in stacks.items()}
    assert max(corner.values()) - min(corner.values()) < 0.1


def test_bad_demo_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_per_class >= 1"):
        write_demo_dataset(tmp_path / "x", n_per_class=0)
    with pytest.raises(ValueError, match="Unknown demo class"):
        draw_demo_face("moustache", 0)
