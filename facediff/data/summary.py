"""What setup found in the data: the usable-classes check and the summary it logs."""

from __future__ import annotations

from collections import Counter

from facediff.data.duplicates import DuplicateResult
from facediff.data.index import ImageIndex
from facediff.data.sources import Listing
from facediff.data.splits import SPLIT_NAMES
from facediff.data.utkface import MALFORMED_FIX, UTKFACE_NAME_FORMAT


def check_usable(listing: Listing, index: ImageIndex, kept_labels: list[int]) -> None:
    """Refuse data in which some class has no usable image, naming the counts and the fix."""
    counts = Counter(kept_labels)
    empty = [name for i, name in enumerate(listing.class_names) if counts[i] == 0]
    if not empty:
        return
    per_class = ", ".join(f"{name}: {counts[i]}" for i, name in enumerate(listing.class_names))
    none = "No usable image at all"
    problem = f"Class(es) {empty} have no usable image" if kept_labels else none
    raise ValueError(
        f"{problem} in {listing.root} after skipping {len(index.unreadable)} unreadable "
        f"file(s) and conflicting duplicates. Usable images per class: {per_class}. Fix: "
        "check the files (python -m facediff.data ROOT) or remove those classes from "
        "`classes`."
    )


def format_summary(
    listing: Listing,
    index: ImageIndex,
    dups: DuplicateResult,
    labels: list[int],
    rows: dict[str, list[int]],
    near: tuple[int, int, int, list[list[str]]] | None = None,
    built_now: bool = False,
) -> str:
    """The table setup logs: images per class and split, and what was skipped. `near`: the
    near-identical groups found, the held-out images dropped and moved, and examples.
    `built_now`: this process decoded the files (prepare_data), even if setup read them back."""
    names = listing.class_names
    width = max(8, *(len(n) for n in names))
    counts = {s: Counter(labels[r] for r in rows[s]) for s in SPLIT_NAMES}
    origin = "loaded from cache" if index.from_cache and not built_now else "built"
    lines = [
        f"Data: layout={listing.layout} root={listing.root} ({sum(map(len, rows.values()))} "
        f"images used, {listing.n_files} files seen, index {origin})",
        f"  {'class':<{width}} " + " ".join(f"{s:>6}" for s in (*SPLIT_NAMES, "total")),
    ]
    for i, name in enumerate(names):
        row = [counts[s][i] for s in SPLIT_NAMES]
        lines.append(f"  {name:<{width}} " + " ".join(f"{v:>6}" for v in (*row, sum(row))))
    totals = [len(rows[s]) for s in SPLIT_NAMES]
    lines.append(f"  {'total':<{width}} " + " ".join(f"{v:>6}" for v in (*totals, sum(totals))))
    if listing.layout == "utkface":
        lines.append(f"  malformed names: {len(listing.malformed)} {listing.malformed[:3]}")
        if listing.malformed:
            lines.append(f"    (not used: names are {UTKFACE_NAME_FORMAT}; {MALFORMED_FIX})")
    if listing.skipped:
        lines.append(f"  skipped entries: {len(listing.skipped)} {listing.skipped[:3]}")
    lines.append(f"  unreadable files: {len(index.unreadable)} {index.unreadable[:3]}")
    action = "dropped" if dups.conflicting_dropped else "kept"
    lines.append(
        f"  duplicate groups: {dups.n_duplicate_groups} ({dups.n_copies_removed} extra copies "
        f"removed, {len(dups.conflicting)} with conflicting labels {action})"
    )
    if near is not None:
        n_groups, dropped, moved, examples = near
        shown = "; ".join(" ~ ".join(group) for group in examples)
        lines.append(
            f"  near-identical groups: {n_groups} ({dropped} held-out cop(ies) of training images "
            f"dropped, {moved} moved into their group's split){': ' + shown if shown else ''}"
        )
    return "\n".join(lines)
