"""Folder layout: ``root/<class>/*.jpg|*.jpeg|*.png`` (extensions case-insensitive)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from facediff.data.entries import scan_dir

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png"})


def is_image_name(name: str) -> bool:
    """True when ``name`` has one of the supported image extensions (any case)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_class_folders(root: str | os.PathLike[str], skipped: list[str] | None = None) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``root``. Entries that cannot be used
    (symlink loops, names that are not UTF-8; see `facediff.data.entries`) are left out and,
    when ``skipped`` is given, appended to it as "name: reason"."""
    scan = scan_dir(root)
    if skipped is not None:
        skipped.extend(scan.skipped)
    return scan.dirs


def list_images(
    folder: str | os.PathLike[str], skipped: list[str] | None = None, prefix: str = ""
) -> list[Path]:
    """Sorted image files directly inside ``folder`` (not recursive). Image names that cannot
    be used are appended to ``skipped`` (when given) as "prefix + name: reason"."""
    scan = scan_dir(folder, prefix, report=is_image_name)
    if skipped is not None:
        skipped.extend(scan.skipped)
    return [Path(folder) / name for name in scan.files if is_image_name(name)]


def describe_folder_classes(root: Path) -> str:
    """``"a: 12, b: 0"`` listing of the class folders under ``root`` with their image counts."""
    names = list_class_folders(root)
    if not names:
        return "(no sub-folders)"
    return ", ".join(f"{name}: {len(list_images(root / name))}" for name in names)


@dataclass
class FolderScan:
    """A folder-layout dataset: class names, (path, class index) pairs sorted by path, and the
    entries skipped because they cannot be used ("relative name: reason")."""

    names: list[str]
    items: list[tuple[Path, int]]
    skipped: list[str] = field(default_factory=list)


def scan_folder(
    root: str | os.PathLike[str], classes: Sequence[str] | None = None
) -> tuple[list[str], list[tuple[Path, int]]]:
    """`scan_folder_entries` without the skipped entries: (class names, (path, class index))."""
    scan = scan_folder_entries(root, classes)
    return scan.names, scan.items


def scan_folder_entries(
    root: str | os.PathLike[str], classes: Sequence[str] | None = None
) -> FolderScan:
    """List the images of a folder-layout dataset.

    Returns the class names (``classes`` in the given order, or all sub-folders sorted),
    ``(path, class index)`` pairs sorted by path and the skipped entries (symlink loops, names
    that are not UTF-8). A requested class with no folder, or a folder without images, raises
    ValueError listing the classes that do exist.
    """
    root = Path(root)
    skipped: list[str] = []
    if classes is None:
        names = list_class_folders(root, skipped)
        if not names:
            raise ValueError(
                f"No class sub-folders in {root}. The folder layout expects "
                "root/<class>/*.jpg|*.jpeg|*.png. Fix: put each class's images in its own "
                "sub-folder, or use layout=utkface for a flat folder of UTKFace files."
            )
    else:
        if isinstance(classes, str):
            raise ValueError(
                f"`classes` must be a list of folder names, got the string {classes!r}. "
                f"Fix: write classes=[{classes}]."
            )
        names = [str(c) for c in classes]
        if not names:
            raise ValueError(
                "`classes` is an empty list. Fix: list at least one class folder, or set "
                "classes=null to use every sub-folder."
            )
        if len(set(names)) != len(names):
            raise ValueError(f"`classes` lists a class twice: {names}. Fix: remove the repeat.")
    items: list[tuple[Path, int]] = []
    problems: list[str] = []
    for index, name in enumerate(names):
        folder = root / name
        if not folder.is_dir():
            problems.append(f"class {name!r} has no folder {folder}")
            continue
        images = list_images(folder, skipped, prefix=f"{name}/")
        if not images:
            problems.append(f"class {name!r} has no .jpg/.jpeg/.png images in {folder}")
        items.extend((path, index) for path in images)
    if problems:
        raise ValueError(
            f"{'; '.join(problems)}. Classes that exist (images per folder): "
            f"{describe_folder_classes(root)}. Fix: choose classes from that list or add images."
        )
    items.sort(key=lambda item: item[0])
    return FolderScan(names, items, skipped)
