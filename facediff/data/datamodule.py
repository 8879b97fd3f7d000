"""LightningDataModule tying listing, indexing, splitting and loading together."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader

from facediff.data.balanced_sampler import BalancedSampler
from facediff.data.dataset import FaceDataset
from facediff.data.demo import DEMO_CLASSES, demo_is_complete, write_demo_dataset
from facediff.data.duplicates import DuplicateResult, resolve_duplicates
from facediff.data.folder import list_class_folders
from facediff.data.index import ImageIndex, build_index
from facediff.data.sources import Listing, check_layout, check_root, list_labelled_files
from facediff.data.splits import SPLIT_NAMES, check_fractions, split_indices
from facediff.data.transforms import Augment, build_eval_transform, build_train_transform
from facediff.data.utkface import ClassSelector
from facediff.untrusted import check_names

log = logging.getLogger("facediff.data")


def to_plain(value: Any) -> Any:
    """Recursively turn mapping/sequence containers (e.g. OmegaConf's) into dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [to_plain(v) for v in value]
    return value


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return value


class FaceDataModule(L.LightningDataModule):
    """Class-conditional face images for diffusion training.

    Batches are ``(images, labels)``: float32 (B, 3, image_size, image_size) in [-1, 1] and
    int64 (B,) class indices into ``class_names``. ``class_names``/``num_classes`` are known right
    after construction (the model needs them before any data is read).
    """

    def __init__(
        self,
        root: str,
        layout: str,
        classes: Mapping[str, Any] | Sequence[str] | None = None,
        attribute: str = "race",
        image_size: int = 64,
        load_size: int | None = None,
        batch_size: int = 10,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        split: Mapping[str, float] | None = None,
        seed: int = 0,
        dedupe: bool = True,
        balanced: bool = False,
        cache_images: bool = True,
        cache_dir: str = ".cache/facediff",
        augment: Mapping[str, Any] | None = None,
        demo: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(str(root)).expanduser()
        self.layout = check_layout(layout)
        self.classes = to_plain(classes)
        self.attribute = attribute
        self.image_size = _positive_int("image_size", image_size)
        self.load_size = image_size + image_size // 4 if load_size is None else load_size
        if _positive_int("load_size", self.load_size) < self.image_size:
            raise ValueError(
                f"load_size={self.load_size} is smaller than image_size={self.image_size}. "
                "Fix: use load_size >= image_size, or null for image_size * 1.25."
            )
        self.batch_size = _positive_int("batch_size", batch_size)
        self.eval_batch_size = _positive_int("eval_batch_size", eval_batch_size or batch_size)
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"`num_workers` must be an int >= 0, got {num_workers!r}.")
        self.num_workers = num_workers
        self.fractions = check_fractions(to_plain(split))
        self.seed = int(seed)
        self.dedupe = bool(dedupe)
        self.balanced = bool(balanced)
        self.cache_images = bool(cache_images)
        self.cache_dir = Path(str(cache_dir)).expanduser()
        self.augment = Augment.from_config(to_plain(augment))
        self.demo = self._check_demo(to_plain(demo))
        configured = self._configured_class_names()
        # Class names become file names (sample folders, figure names): one plain name each.
        self._class_names = None if configured is None else check_names(configured, "Class name")
        if self.demo is not None:
            self.classes = self._class_names  # demo order (glasses, hat, beard), not sorted
        self.index: ImageIndex | None = None  # decoded files; dataset rows index into it
        self.train_set: FaceDataset | None = None
        self.val_set: FaceDataset | None = None
        self.test_set: FaceDataset | None = None
        self._eval_train_set: FaceDataset | None = None

    # ----------------------------------------------------------------------------- config
    def _check_demo(self, demo: Any) -> dict[str, int] | None:
        if demo is None:
            return None
        example = "demo={n_per_class: 300, size: 64, seed: 0}"
        if not isinstance(demo, dict) or set(demo) - {"n_per_class", "size", "seed"}:
            raise ValueError(f"`demo` must be null or a mapping like {example}, got {demo!r}.")
        if self.layout != "folder":
            raise ValueError(
                f"The demo data uses the folder layout. Fix: set layout=folder with {example}."
            )
        return {key: int(value) for key, value in demo.items()}

    def _configured_class_names(self) -> list[str] | None:
        """Class names decidable without touching the disk (None: list sub-folders later)."""
        if self.layout == "utkface":
            if self.classes is not None and not isinstance(self.classes, dict):
                raise ValueError(
                    f"layout=utkface takes `classes` as a mapping of class name -> label value "
                    f"(e.g. {{white: 0, black: 1}} for attribute=race), got {self.classes!r}."
                )
            return ClassSelector(self.attribute, self.classes).names
        if self.classes is not None and not isinstance(self.classes, list):
            raise ValueError(
                f"layout=folder takes `classes` as a list of sub-folder names or null, got "
                f"{self.classes!r}."
            )
        if self.demo is not None:
            names = list(DEMO_CLASSES) if self.classes is None else [str(c) for c in self.classes]
            unknown = [name for name in names if name not in DEMO_CLASSES]
            if unknown:
                raise ValueError(
                    f"Demo classes {unknown} do not exist. Fix: choose from {list(DEMO_CLASSES)}."
                )
            return names
        return None if self.classes is None else [str(c) for c in self.classes]

    @property
    def class_names(self) -> list[str]:
        """Class names in label order."""
        if self._class_names is None:
            self._class_names = check_names(list_class_folders(check_root(self.root)), "Class name")
        return list(self._class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # ---------------------------------------------------------------------------- prepare
    def _ensure_demo(self) -> None:
        if self.demo is not None and not demo_is_complete(self.root, **self._demo_args()):
            write_demo_dataset(self.root, **self._demo_args())

    def _demo_args(self) -> dict[str, int]:
        assert self.demo is not None
        return {"n_per_class": 300, "size": 64, "seed": 0, **self.demo}

    def _listing(self) -> Listing:
        return list_labelled_files(self.root, self.layout, self.classes, self.attribute)

    def _index(self, listing: Listing) -> ImageIndex:
        return build_index(
            listing.root,
            listing.layout,
            listing.relpaths,
            cache_dir=self.cache_dir,
            load_size=self.load_size,
            cache_images=self.cache_images,
        )

    def prepare_data(self) -> None:
        """Generate the demo data if configured and build the index cache (rank 0 only)."""
        self._ensure_demo()
        self._index(self._listing())

    # ------------------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self._ensure_demo()
        listing = self._listing()
        if self._class_names is not None and self._class_names != listing.class_names:
            raise ValueError(
                f"The class folders in {self.root} changed after the model was configured: "
                f"{self._class_names} became {listing.class_names}. Fix: restart the run, or "
                "list the classes explicitly in `classes`."
            )
        self._class_names = check_names(listing.class_names, "Class name")
        index = self.index = self._index(listing)
        label_of = dict(zip(listing.relpaths, listing.labels, strict=True))
        labels = [label_of[p] for p in index.relpaths]
        dups = resolve_duplicates(index.relpaths, labels, index.digests, self.dedupe)
        kept_labels = [labels[row] for row in dups.keep]
        self._check_usable(listing, index, kept_labels)
        parts = split_indices(kept_labels, dups.groups, self.fractions, self.seed)
        rows = {name: [dups.keep[i] for i in parts[name]] for name in SPLIT_NAMES}
        table: dict[str, Any] = {"load_size": self.load_size}
        if index.images is not None:
            table["images"] = index.images
        else:
            table["paths"] = [listing.root / p for p in index.relpaths]
        train_tf = build_train_transform(self.image_size, self.augment)
        eval_tf = build_eval_transform(self.image_size)
        self.train_set = FaceDataset(labels, train_tf, rows=rows["train"], **table)
        self.val_set = FaceDataset(labels, eval_tf, rows=rows["val"], **table)
        self.test_set = FaceDataset(labels, eval_tf, rows=rows["test"], **table)
        self._eval_train_set = FaceDataset(labels, eval_tf, rows=rows["train"], **table)
        rank_zero_only(log.info)(self._summary(listing, index, dups, labels, rows))

    def _check_usable(self, listing: Listing, index: ImageIndex, kept_labels: list[int]) -> None:
        counts = Counter(kept_labels)
        empty = [name for i, name in enumerate(listing.class_names) if counts[i] == 0]
        if not empty:
            return
        per_class = ", ".join(f"{name}: {counts[i]}" for i, name in enumerate(listing.class_names))
        if kept_labels:
            problem = f"Class(es) {empty} have no usable image"
        else:
            problem = "No usable image at all"
        raise ValueError(
            f"{problem} in {listing.root} after skipping {len(index.unreadable)} unreadable "
            f"file(s) and conflicting duplicates. Usable images per class: {per_class}. Fix: "
            "check the files (python -m facediff.data ROOT) or remove those classes from "
            "`classes`."
        )

    def _summary(
        self,
        listing: Listing,
        index: ImageIndex,
        dups: DuplicateResult,
        labels: list[int],
        rows: dict[str, list[int]],
    ) -> str:
        names = listing.class_names
        width = max(8, *(len(n) for n in names))
        counts = {s: Counter(labels[r] for r in rows[s]) for s in SPLIT_NAMES}
        origin = "loaded from cache" if index.from_cache else "built"
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
        lines.append(f"  unreadable files: {len(index.unreadable)} {index.unreadable[:3]}")
        action = "dropped" if dups.conflicting_dropped else "kept"
        lines.append(
            f"  duplicate groups: {dups.n_duplicate_groups} ({dups.n_copies_removed} extra copies "
            f"removed, {len(dups.conflicting)} with conflicting labels {action})"
        )
        return "\n".join(lines)

    # ------------------------------------------------------------------------ evaluation
    def eval_dataset(self, split: str) -> FaceDataset:
        """A split without augmentation (the training split included), for evaluation."""
        sets = {"train": self._eval_train_set, "val": self.val_set, "test": self.test_set}
        if split not in sets:
            raise ValueError(f"Unknown split {split!r}; choose one of {SPLIT_NAMES}.")
        return self._require(sets[split])

    def split_digest(self, split: str) -> str:
        """A hash of the content and labels of one split: changes whenever its images do."""
        dataset, index = self.eval_dataset(split), self.index
        assert index is not None
        digest = hashlib.blake2b(digest_size=12)
        for row, label in sorted(zip(dataset.rows, dataset.targets, strict=True)):
            digest.update(f"{index.digests[row]}:{label}\n".encode())
        return digest.hexdigest()

    # -------------------------------------------------------------------------- loaders
    def _require(self, dataset: FaceDataset | None) -> FaceDataset:
        if dataset is None:
            raise RuntimeError("FaceDataModule.setup() must run before asking for a dataloader.")
        return dataset

    def _loader(self, dataset: FaceDataset, batch_size: int, **kwargs: Any) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self._require(self.train_set)
        sampler = BalancedSampler(dataset.targets, seed=self.seed) if self.balanced else None
        return self._loader(
            dataset,
            self.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            drop_last=len(dataset) > self.batch_size,
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._require(self.val_set), self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._require(self.test_set), self.eval_batch_size, shuffle=False)
