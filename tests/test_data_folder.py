"""Folder layout listing, layout detection and the errors that list what exists."""

from __future__ import annotations

from pathlib import Path

import pytest

from facediff.data.folder import scan_folder
from facediff.data.sources import detect_layout, list_labelled_files


def test_scan_all_subfolders_sorted(folder_root: Path) -> None:
    names, items = scan_folder(folder_root)
    assert names == ["a", "b", "c"]
    counts = [sum(1 for _, label in items if label == i) for i in range(3)]
    assert counts == [8, 6, 5]  # .txt and hidden files ignored, any-case extensions kept
    assert {p.suffix for p, _ in items} == {".jpg", ".png", ".JPG", ".jpeg", ".PNG"}


def test_requested_classes_keep_their_order(folder_root: Path) -> None:
    names, items = scan_folder(folder_root, ["c", "a"])
    assert names == ["c", "a"]
    assert {p.parent.name for p, label in items if label == 0} == {"c"}
    assert len(items) == 13


def test_missing_class_lists_existing_classes(folder_root: Path) -> None:
    with pytest.raises(ValueError, match="class 'zebra' has no folder") as info:
        scan_folder(folder_root, ["a", "zebra"])
    assert "a: 8, b: 6, c: 5" in str(info.value)


def test_empty_class_folder_is_an_error(folder_root: Path) -> None:
    (folder_root / "d").mkdir()
    with pytest.raises(ValueError, match=r"class 'd' has no \.jpg/\.jpeg/\.png images") as info:
        scan_folder(folder_root)
    assert "d: 0" in str(info.value)


def test_no_subfolders(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="No class sub-folders"):
        scan_folder(tmp_path)


def test_listing_is_relative_and_labelled(folder_root: Path) -> None:
    listing = list_labelled_files(folder_root, "folder", ["b", "c"])
    assert listing.class_names == ["b", "c"]
    assert listing.relpaths == sorted(listing.relpaths)
    assert all(p.startswith(("b/", "c/")) for p in listing.relpaths)
    assert listing.labels.count(0) == 6 and listing.labels.count(1) == 5


def test_missing_root_explains_layouts_download_and_demo(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        list_labelled_files(tmp_path / "nope", "utkface")
    text = str(info.value)
    assert str(tmp_path / "nope") in text
    assert "[age]_[gender]_[race]_[datetime].jpg[.chip.jpg]" in text
    assert "root/<class>/*.jpg" not in text  # the layout chosen, not both
    assert "https://susanqq.github.io/UTKFace/" in text
    assert "python train.py experiment=demo" in text


def test_utkface_listing_and_unmatched_class(utk_root: Path) -> None:
    listing = list_labelled_files(utk_root, "utkface", {"old": [50, 120], "kid": [0, 10]}, "age")
    assert listing.class_names == ["old", "kid"]
    assert listing.labels.count(0) == 5 and listing.labels.count(1) == 5
    assert len(listing.malformed) == 5 and listing.n_files == 35
    with pytest.raises(ValueError, match=r"'ancient'.*match no image") as info:
        list_labelled_files(utk_root, "utkface", {"kid": [0, 10], "ancient": [100, 200]}, "age")
    text = str(info.value)
    assert "kid (age in [0, 10)): 5" in text and "ancient (age in [100, 200)): 0" in text
    assert "0 White: 6" in text and "ages 5..55" in text


def test_wrong_layout_hints(utk_root: Path, folder_root: Path) -> None:
    with pytest.raises(ValueError, match="did you mean layout=folder"):
        list_labelled_files(folder_root, "utkface")
    with pytest.raises(ValueError, match="Unknown data layout 'flat'"):
        list_labelled_files(utk_root, "flat")


def test_detect_layout(utk_root: Path, folder_root: Path) -> None:
    assert detect_layout(utk_root) == "utkface"
    assert detect_layout(folder_root) == "folder"


def test_a_missing_folder_root_is_explained_as_a_folder_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        list_labelled_files(tmp_path / "nowhere", "folder")
    text = str(info.value)
    assert "root/<class>/*.jpg" in text and "experiment=demo" in text and "UTKFace" not in text
