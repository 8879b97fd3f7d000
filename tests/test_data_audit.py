"""``python -m facediff.data`` audit: counts, problems found, exit codes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from facediff.data.audit import audit_dataset, main


def test_utkface_audit_counts_problems(utk_root: Path, capsys) -> None:
    shutil.copy(next(utk_root.glob("5_0_0_*")), utk_root / "5_1_0_20170101000009999.jpg.chip.jpg")
    (utk_root / "40_0_3_20170101000008888.jpg.chip.jpg").write_bytes(b"\xff\xd8 truncated")
    assert main([str(utk_root)]) == 0
    out = capsys.readouterr().out
    assert "layout: utkface" in out
    for pattern in (
        r"total files +37\n",
        r"usable images +31\n",
        r"0 White +7 ",
        r"3 Indian +6 ",
        r"0 male +15 ",
        r"1 female +16 ",
        r"malformed names +5\n",
        r"unreadable +1\n +40_0_3_20170101000008888.jpg.chip.jpg: cannot decode",
        r"duplicate groups +1 .*1 with conflicting labels",
        r"24x24 +31 +100.0%",
        r"age: min 5, median 25",
    ):
        assert re.search(pattern, out), pattern


def test_folder_audit(folder_root: Path) -> None:
    report = audit_dataset(folder_root, "auto")
    assert report.layout == "folder" and report.total_files == 19 and report.usable == 19
    assert report.class_counts == {"a": 8, "b": 6, "c": 5}
    assert report.sizes == {(24, 24): 19} and not report.duplicate_groups


def test_exit_codes(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "experiment=demo" in err
    (tmp_path / "junk" / "x").mkdir(parents=True)
    (tmp_path / "junk" / "x" / "a.png").write_bytes(b"not a png")
    assert main([str(tmp_path / "junk"), "--layout", "folder"]) == 1
    assert "no usable images" in capsys.readouterr().err


def test_module_entry_point(utk_root: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "facediff.data", str(utk_root), "--layout", "utkface"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert re.search(r"usable images +30\n", run.stdout)


def test_real_sample(real_utkface: Path) -> None:
    report = audit_dataset(real_utkface)
    assert report.layout == "utkface"
    assert report.total_files == 5008 and report.usable == 5000 and len(report.malformed) == 8
    assert all(count == 1000 for count in report.class_counts.values())
    assert not report.unreadable
    # The one photograph its makers left in twice (RMS 0.041 at 32 px; the nearest two
    # different photographs are 0.078 apart).
    assert report.near_identical == [
        ("26_0_3_20170117153104987.jpg.chip.jpg", "26_0_3_20170117154317645.jpg.chip.jpg")
    ]


@pytest.mark.parametrize("layout", ["utkface"])
def test_real_sample_datamodule(real_utkface: Path, tmp_path: Path, layout: str) -> None:
    from facediff.data import FaceDataModule

    dm = FaceDataModule(
        root=str(real_utkface),
        layout=layout,
        classes={"white": 0, "black": 1},
        image_size=16,
        cache_dir=str(tmp_path),
        num_workers=0,
        cache_images=False,
    )
    dm.setup("fit")
    assert len(dm.train_set) == 1600 and len(dm.val_set) == 200 and len(dm.test_set) == 200
