"""Dataset audit: what is in a data folder and what training would be able to use.

Run as ``python -m facediff.data ROOT [--layout auto|utkface|folder]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from facediff.data.duplicates import group_by_digest
from facediff.data.folder import list_class_folders, list_images
from facediff.data.index import decode_files
from facediff.data.near_duplicates import COMPARE_SIZE, near_identical_pairs
from facediff.data.sources import check_root, detect_layout
from facediff.data.utkface import (
    GENDER_NAMES,
    MALFORMED_FIX,
    RACE_NAMES,
    UTKFACE_NAME_FORMAT,
    scan_utkface_entries,
)

EXAMPLES = 5
NEAR_DUPLICATES = 0.06  # as conf/data/utkface.yaml's near_duplicates


@dataclass
class AuditReport:
    root: Path
    layout: str
    total_files: int = 0
    usable: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)
    gender_counts: dict[str, int] = field(default_factory=dict)
    ages: list[int] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # symlink loops, non-UTF-8 names
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    duplicate_groups: list[list[str]] = field(default_factory=list)
    conflicting_groups: int = 0
    near_identical: list[tuple[str, str]] = field(default_factory=list)  # not byte-identical
    near_max_rms: float | None = None
    sizes: Counter[tuple[int, int]] = field(default_factory=Counter)
    seconds: float = 0.0


def audit_dataset(
    root: str | os.PathLike[str],
    layout: str = "auto",
    num_workers: int | None = None,
    near_duplicates: float | None = NEAR_DUPLICATES,
) -> AuditReport:
    """Scan, hash and decode every file under ``root``; never raises for bad files.
    ``near_duplicates``: also list pairs of different files whose pixels differ by at most
    this RMS at 32 px (facediff.data.near_duplicates); None: skip that comparison."""
    start = time.monotonic()
    path = check_root(root)
    if layout == "auto":
        layout = detect_layout(path)
    report = AuditReport(path, layout)
    # (relative path, label tuple used to detect conflicting duplicates, class name)
    entries: list[tuple[str, tuple[int, ...], str]] = []
    if layout == "utkface":
        records, report.malformed, report.skipped = scan_utkface_entries(path)
        report.total_files = len(records) + len(report.malformed) + len(report.skipped)
        entries = [
            (r.path.name, (r.age, r.gender, r.race), f"{r.race} {RACE_NAMES[r.race]}")
            for r in records
        ]
        extra = {e[0]: r for e, r in zip(entries, records, strict=True)}
    elif layout == "folder":
        for index, name in enumerate(list_class_folders(path, report.skipped)):
            report.class_counts[name] = 0
            for image in list_images(path / name, report.skipped, prefix=f"{name}/"):
                entries.append((image.relative_to(path).as_posix(), (index,), name))
        report.total_files = len(entries) + len(report.skipped)
        extra = {}
    else:
        raise ValueError(f"Unknown layout {layout!r}. Fix: use auto, utkface or folder.")
    size = None if near_duplicates is None else COMPARE_SIZE
    result = decode_files([path / rel for rel, _, _ in entries], size, num_workers)
    usable: list[int] = []
    for i, (rel, _, _) in enumerate(entries):
        error = result.errors[i]
        if error is None:
            usable.append(i)
        else:
            report.unreadable.append((rel, error))
    report.usable = len(usable)
    if layout == "utkface":
        report.class_counts = {f"{v} {RACE_NAMES[v]}": 0 for v in RACE_NAMES}
        report.gender_counts = {f"{v} {GENDER_NAMES[v]}": 0 for v in GENDER_NAMES}
    for i in usable:
        rel, _, name = entries[i]
        report.class_counts[name] = report.class_counts.get(name, 0) + 1
        width, height = (int(v) for v in result.sizes[i])
        report.sizes[(width, height)] += 1
        if rel in extra:
            record = extra[rel]
            key = f"{record.gender} {GENDER_NAMES[record.gender]}"
            report.gender_counts[key] += 1
            report.ages.append(record.age)
    for group in group_by_digest([result.digests[i] for i in usable]):
        if len(group) > 1:
            members = [usable[g] for g in group]
            report.duplicate_groups.append(sorted(entries[m][0] for m in members))
            report.conflicting_groups += len({entries[m][1] for m in members}) > 1
    if near_duplicates is not None and result.images is not None:
        report.near_max_rms = near_duplicates
        for i, j in near_identical_pairs(result.images, near_duplicates, rows=usable):
            a, b = usable[i], usable[j]
            if result.digests[a] != result.digests[b]:
                report.near_identical.append((entries[a][0], entries[b][0]))
    report.seconds = time.monotonic() - start
    return report


def _table(rows: Sequence[tuple[str, int]], total: int) -> list[str]:
    width = max([len(name) for name, _ in rows] + [5])
    lines = []
    for name, count in rows:
        share = f"{100 * count / total:5.1f}%" if total else "    -"
        lines.append(f"    {name:<{width}}  {count:>7}  {share}")
    return lines


def _examples(items: Sequence[str]) -> str:
    shown = ", ".join(items[:EXAMPLES])
    more = f", ... (+{len(items) - EXAMPLES} more)" if len(items) > EXAMPLES else ""
    return shown + more


def format_report(report: AuditReport) -> str:
    """Plain-text rendering of an audit."""
    lines = [
        f"Dataset audit: {report.root}  (layout: {report.layout}, {report.seconds:.1f}s)",
        f"  total files     {report.total_files:>7}",
        f"  usable images   {report.usable:>7}",
        "  images per class" + (" (race)" if report.layout == "utkface" else "") + ":",
        *_table(sorted(report.class_counts.items()), report.usable),
    ]
    if report.gender_counts:
        genders = _table(sorted(report.gender_counts.items()), report.usable)
        lines += ["  images per gender:", *genders]
    if report.ages:
        ages = report.ages
        lines.append(
            f"  age: min {min(ages)}, median {statistics.median(ages):g}, "
            f"mean {statistics.fmean(ages):.1f}, max {max(ages)}"
        )
        decades = Counter(min(age // 10, 9) for age in ages)
        buckets = [(f"{d * 10}-{d * 10 + 9}" if d < 9 else "90+", decades[d]) for d in range(10)]
        lines.append("    " + "  ".join(f"{name}: {count}" for name, count in buckets))
    if report.layout == "utkface":
        lines.append(f"  malformed names {len(report.malformed):>7}")
        if report.malformed:
            lines.append(f"    e.g. {_examples([repr(n) for n in report.malformed])}")
            lines.append(f"    (no labels in the name: {UTKFACE_NAME_FORMAT}; {MALFORMED_FIX})")
    lines.append(f"  skipped entries {len(report.skipped):>7}  (symlink loops, names not UTF-8)")
    for entry in report.skipped[:EXAMPLES]:
        lines.append(f"    {entry}")
    lines.append(f"  unreadable      {len(report.unreadable):>7}")
    for rel, error in report.unreadable[:EXAMPLES]:
        lines.append(f"    {rel}: {error}")
    if report.unreadable:
        lines.append("    (left out of training; fix: re-download or delete them)")
    lines.append(
        f"  duplicate groups {len(report.duplicate_groups):>6}  (byte-identical files; "
        f"{report.conflicting_groups} with conflicting labels)"
    )
    for group in report.duplicate_groups[:3]:
        lines.append(f"    {' = '.join(group)}")
    if report.near_max_rms is not None:
        lines.append(
            f"  near-identical  {len(report.near_identical):>7}  (pairs of other files within RMS "
            f"{report.near_max_rms:g} at 32 px: one photograph saved twice; training keeps each "
            "out of the held-out splits, data.near_duplicates)"
        )
        for a, b in report.near_identical[:3]:
            lines.append(f"    {a} ~ {b}")
    lines.append("  image sizes (WxH):")
    lines += _table([(f"{w}x{h}", n) for (w, h), n in report.sizes.most_common(8)], report.usable)
    if len(report.sizes) > 8:
        lines.append(f"    ... {len(report.sizes) - 8} more sizes")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point. Exit codes: 0 ok, 1 nothing usable, 2 missing root / bad arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m facediff.data",
        description="Audit a face dataset folder (UTKFace flat folder or root/<class>/ images).",
    )
    parser.add_argument("root", help="dataset folder")
    parser.add_argument("--layout", choices=["auto", "utkface", "folder"], default="auto")
    parser.add_argument(
        "--workers", type=int, default=None, help="decode processes (default: all CPUs)"
    )
    parser.add_argument(
        "--near-duplicates",
        type=float,
        default=NEAR_DUPLICATES,
        help="RMS pixel difference at 32 px under which two files count as one photograph "
        f"(default {NEAR_DUPLICATES}); a negative value skips the comparison",
    )
    args = parser.parse_args(argv)
    near = args.near_duplicates if args.near_duplicates >= 0 else None
    try:
        report = audit_dataset(args.root, args.layout, args.workers, near)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    if report.usable == 0:
        print(
            f"error: no usable images in {report.root} (layout {report.layout}). Fix: check the "
            "layout (--layout) and that the files are readable images.",
            file=sys.stderr,
        )
        return 1
    return 0
