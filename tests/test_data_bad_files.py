"""Bad data files: a symlink loop, a name that is not valid UTF-8, a decompression bomb and a
too-large image are skipped and reported (listing, index, datamodule, audit), never a crash."""

from __future__ import annotations

import io
import logging
import os
import struct
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from facediff.data import decode
from facediff.data.audit import audit_dataset, format_report, main
from facediff.data.datamodule import FaceDataModule
from facediff.data.decode import read_and_decode
from facediff.data.index import build_index
from facediff.data.sources import detect_layout, list_labelled_files


def utk_name(age: int, gender: int, race: int, serial: int) -> str:
    return f"{age}_{gender}_{race}_{20170101000000000 + serial:017d}.jpg.chip.jpg"


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's
    shape: Pillow would allocate for the header's size on decoding)."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # IHDR CRC
    return bytes(data)


def write_bytes_name(folder: Path, name: bytes, data: bytes) -> None:
    """Create ``folder/name`` with a raw byte name (skip where the file system refuses it)."""
    try:
        fd = os.open(os.fsencode(folder) + b"/" + name, os.O_CREAT | os.O_WRONLY, 0o644)
    except OSError as exc:  # e.g. APFS, which only stores UTF-8 names
        pytest.skip(f"this file system refuses non-UTF-8 names: {exc}")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


@pytest.fixture
def bad_folder(tmp_path: Path, write_image) -> Path:
    """root/a and root/b with 3 good images each, plus: a/loop.png (a symlink to itself),
    b/<0xff>.png (a name that is not UTF-8), c (a folder symlink loop), a/bomb.png (header
    claims 10^10 pixels) and a/huge.png (81 M pixels: over facediff's limit, under Pillow's)."""
    root = tmp_path / "faces"
    for name in ("a", "b"):
        for k in range(3):
            write_image(root / name / f"{k}.png", seed=10 * ord(name) + k)
    os.symlink("loop.png", root / "a" / "loop.png")
    os.symlink("c", root / "c")
    write_bytes_name(root / "b", b"\xff.png", (root / "b" / "0.png").read_bytes())
    (root / "a" / "bomb.png").write_bytes(png_claiming(100_000, 100_000))
    (root / "a" / "huge.png").write_bytes(png_claiming(9_000, 9_000))
    return root


def test_listing_skips_and_reports_loops_and_non_utf8_names(bad_folder: Path, caplog) -> None:
    assert detect_layout(bad_folder) == "folder"
    with caplog.at_level(logging.WARNING):
        listing = list_labelled_files(bad_folder, "folder")
    assert listing.class_names == ["a", "b"]
    assert "a/loop.png" not in listing.relpaths and len(listing.relpaths) == 8
    assert all(p.isascii() for p in listing.relpaths)
    skipped = "\n".join(listing.skipped)
    assert "a/loop.png: cannot be read (Too many levels of symbolic links)" in skipped
    assert "b/\\xff.png: the name is not valid UTF-8. Fix: rename it" in skipped
    assert "c: cannot be read" in skipped
    assert len(listing.skipped) == 3 and listing.n_files == 11
    assert "Skipped 3 unusable entries" in caplog.text and "a/loop.png" in caplog.text


def test_bombs_and_huge_images_are_unreadable_not_decoded(bad_folder: Path, caplog) -> None:
    listing = list_labelled_files(bad_folder, "folder")
    with caplog.at_level(logging.WARNING):
        index = build_index(bad_folder, "folder", listing.relpaths, cache_dir=None, load_size=8)
    assert sorted(index.unreadable) == ["a/bomb.png", "a/huge.png"]
    assert len(index.relpaths) == 6 and "Skipped 2 unreadable image file(s)" in caplog.text
    bomb = read_and_decode(bad_folder / "a" / "bomb.png", 8)
    assert bomb.error is not None and "DecompressionBomb" in bomb.error
    huge = read_and_decode(bad_folder / "a" / "huge.png", 8)
    assert huge.error is not None and "9000x9000 pixels is more than facediff's limit" in huge.error
    assert "MAX_IMAGE_PIXELS" in huge.error


def test_the_project_limits_are_knobs(tmp_path: Path, write_image, monkeypatch) -> None:
    path = write_image(tmp_path / "photo.png", seed=1, size=40)
    assert read_and_decode(path, 8).ok
    monkeypatch.setattr(decode, "MAX_IMAGE_PIXELS", 39 * 39)
    assert "40x40 pixels is more than" in read_and_decode(path, 8).error
    monkeypatch.setattr(decode, "MAX_IMAGE_PIXELS", 10**6)
    monkeypatch.setattr(decode, "MAX_FILE_BYTES", 10)
    error = read_and_decode(path, 8).error
    assert error.startswith("cannot read:") and "MAX_FILE_BYTES" in error


def test_datamodule_trains_on_what_is_left(bad_folder: Path, tmp_path: Path, caplog) -> None:
    dm = FaceDataModule(str(bad_folder), "folder", image_size=8, batch_size=2, num_workers=0,
                        cache_dir=str(tmp_path / "cache"), dedupe=False)  # fmt: skip
    with caplog.at_level(logging.INFO, logger="facediff.data"):
        dm.prepare_data()
        dm.setup("fit")
    assert dm.index is not None and len(dm.index.relpaths) == 6
    assert "skipped entries: 3" in caplog.text and "unreadable files: 2" in caplog.text
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape[1:] == (3, 8, 8) and labels.dtype == torch.int64


def test_audit_reports_every_kind(bad_folder: Path, capsys) -> None:
    report = audit_dataset(bad_folder, num_workers=0)
    assert report.layout == "folder" and report.usable == 6 and report.total_files == 11
    assert len(report.skipped) == 3 and len(report.unreadable) == 2
    text = format_report(report)
    assert "skipped entries       3" in text and "b/\\xff.png" in text
    assert "a/bomb.png: cannot decode" in text
    assert main([str(bad_folder), "--workers", "0"]) == 0
    assert "a/loop.png" in capsys.readouterr().out


def test_utkface_folder_with_a_loop_and_a_non_utf8_name(tmp_path: Path, write_image) -> None:
    root = tmp_path / "utk"
    for race in range(2):
        write_image(root / utk_name(30, 0, race, race), seed=race)
    os.symlink(utk_name(40, 1, 0, 9), root / utk_name(40, 1, 0, 9))  # a loop, well-named
    write_bytes_name(root, b"30_0_1_\xff.jpg", b"junk")
    assert detect_layout(root) == "utkface"
    listing = list_labelled_files(root, "utkface", {"white": 0, "black": 1})
    assert len(listing.relpaths) == 2 and len(listing.skipped) == 2
    report = audit_dataset(root, num_workers=0)
    assert report.usable == 2 and len(report.skipped) == 2 and report.total_files == 4


def test_an_empty_file_and_a_malformed_name_are_named_with_a_fix(tmp_path: Path, write_image):
    root = tmp_path / "utk"
    for race in range(2):
        write_image(root / utk_name(30, 0, race, race), seed=race)
    (root / utk_name(31, 0, 0, 7)).write_bytes(b"")  # an interrupted download
    write_image(root / "face_of_someone.jpg", seed=5)
    assert read_and_decode(root / utk_name(31, 0, 0, 7)).error.startswith("empty file (0 bytes)")
    text = format_report(audit_dataset(root, num_workers=0))
    assert "empty file (0 bytes)" in text and "re-download or delete them" in text
    assert "'face_of_someone.jpg'" in text and "rename them to that pattern" in text
