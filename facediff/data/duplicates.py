"""Group byte-identical files and decide which copies to keep.

UTKFace contains a few files that are exact copies of each other, sometimes under different
labels. A copy in train and another in test leaks the test set, so groups (not files) are the
unit of splitting, and groups whose copies disagree on the label are unusable as supervision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class DuplicateResult:
    """Rows kept (positions into the input lists) with a group id per kept row."""

    keep: list[int]
    groups: list[int]
    n_duplicate_groups: int = 0  # groups with more than one file
    n_copies_removed: int = 0  # extra copies dropped by dedupe
    conflicting: list[list[str]] = field(default_factory=list)  # groups with mixed labels
    conflicting_dropped: bool = False


def group_by_digest(digests: Sequence[str]) -> list[list[int]]:
    """Positions grouped by identical digest, groups ordered by their first position."""
    groups: dict[str, list[int]] = {}
    for position, digest in enumerate(digests):
        groups.setdefault(digest, []).append(position)
    return list(groups.values())


def resolve_duplicates(
    relpaths: Sequence[str], labels: Sequence[int], digests: Sequence[str], dedupe: bool = True
) -> DuplicateResult:
    """Apply the duplicate policy.

    ``dedupe=True``: keep one file per group (first by sorted name) and drop groups whose members
    carry different labels. ``dedupe=False``: keep every file; copies still share a group id so
    the splitter keeps them together.
    """
    groups = group_by_digest(digests)
    result = DuplicateResult(keep=[], groups=[], conflicting_dropped=dedupe)
    next_group = 0
    for group in groups:
        members = sorted(group, key=lambda position: relpaths[position])
        if len(members) > 1:
            result.n_duplicate_groups += 1
            if len({labels[p] for p in members}) > 1:
                result.conflicting.append([relpaths[p] for p in members])
                if dedupe:
                    continue
        chosen = members[:1] if dedupe else members
        result.n_copies_removed += len(members) - len(chosen)
        for position in chosen:
            result.keep.append(position)
            result.groups.append(next_group)
        next_group += 1
    order = sorted(range(len(result.keep)), key=lambda i: result.keep[i])
    result.keep = [result.keep[i] for i in order]
    result.groups = [result.groups[i] for i in order]
    return result
