"""LightningDataModule tying listing, indexing, splitting and loading together."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, Sampler

from facediff.data.balanced_sampler import BalancedSampler
from facediff.data.checks import (
    check_demo,
    check_near_duplicates,
    configured_class_names,
    positive_int,
)
from facediff.data.dataset import FaceDataset
from facediff.data.demo import write_demo_dataset
from facediff.data.duplicates import resolve_duplicates
from facediff.data.folder import list_class_folders
from facediff.data.index import ImageIndex, build_index
from facediff.data.near_duplicates import separate_near_identical
from facediff.data.resumable import ResumableDataLoader, SeededRandomSampler
from facediff.data.sources import Listing, check_layout, check_root, list_labelled_files
from facediff.data.splits import SPLIT_NAMES, check_fractions, content_digest, split_indices
from facediff.data.summary import check_usable, format_summary
from facediff.data.transforms import (
    Augment,
    build_eval_transform,
    build_train_collate,
    build_train_transform,
)
from facediff.data.workers import defer_stop_signals
from facediff.untrusted import check_names

log = logging.getLogger("facediff.data")


class FaceDataModule(L.LightningDataModule):
    """Class-conditional face images for diffusion training.

    Batches are ``(images, labels)``: float32 (B, 3, image_size, image_size) in [-1, 1] and
    int64 (B,) class indices into ``class_names``. ``class_names``/``num_classes`` are known right
    after construction (the model needs them before any data is read).

    The arguments are conf/data/*.yaml's keys, where their defaults live. One exception:
    ``near_duplicates`` (keep near-identical files out of different splits, see
    facediff.data.near_duplicates) is 0.06 in conf/data/utkface.yaml but None (off) here, so that
    a data config saved before the setting existed, as old checkpoints hold it, rebuilds the same
    split; pass it explicitly when building this class in your own code.
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
        near_duplicates: float | None = None,
        balanced: bool = False,
        cache_images: bool = True,
        cache_dir: str = ".cache/facediff",
        augment: Mapping[str, Any] | None = None,
        demo: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(str(root)).expanduser()
        self.layout = check_layout(layout)
        self.classes = classes
        self.attribute = attribute
        self.image_size = positive_int("image_size", image_size)
        self.load_size = image_size + image_size // 4 if load_size is None else load_size
        if positive_int("load_size", self.load_size) < self.image_size:
            raise ValueError(
                f"load_size={self.load_size} is smaller than image_size={self.image_size}. "
                "Fix: use load_size >= image_size, or null for image_size * 1.25."
            )
        self.batch_size = positive_int("batch_size", batch_size)
        self.eval_batch_size = positive_int("eval_batch_size", eval_batch_size or batch_size)
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"`num_workers` must be an int >= 0, got {num_workers!r}.")
        self.num_workers = num_workers
        self.fractions = check_fractions(split)
        self.seed = int(seed)
        self.dedupe = bool(dedupe)
        # None where a data config predates the setting (old checkpoints keep their split)
        self.near_duplicates = check_near_duplicates(near_duplicates, cache_images)
        self.balanced = bool(balanced)
        self.cache_images = bool(cache_images)
        self.cache_dir = Path(str(cache_dir)).expanduser()
        self.augment = Augment.from_config(augment)
        self.demo = check_demo(demo, self.layout)
        configured = configured_class_names(self.layout, self.classes, attribute, self.demo)
        # Class names become file names (sample folders, figure names): one plain name each.
        self._class_names = None if configured is None else check_names(configured, "Class name")
        self.built_index = False  # prepare_data decoded the files (not read them from the cache)
        if self.demo is not None:
            self.classes = self._class_names  # demo order (glasses, hat, beard), not sorted
        self.index: ImageIndex | None = None  # decoded files; dataset rows index into it
        self.train_set: FaceDataset | None = None
        self.val_set: FaceDataset | None = None
        self.test_set: FaceDataset | None = None
        self._eval_train_set: FaceDataset | None = None

    @property
    def class_names(self) -> list[str]:
        """Class names in label order."""
        if self._class_names is None:
            self._class_names = check_names(
                list_class_folders(check_root(self.root, self.layout)), "Class name"
            )
        return list(self._class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # ---------------------------------------------------------------------------- prepare
    def _ensure_demo(self) -> None:
        if self.demo is not None:
            write_demo_dataset(self.root, **self.demo)  # returns at once when complete

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
        self.built_index = not self._index(self._listing()).from_cache

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
        check_usable(listing, index, kept_labels)
        parts = split_indices(kept_labels, dups.groups, self.fractions, self.seed)
        rows = {name: [dups.keep[i] for i in parts[name]] for name in SPLIT_NAMES}
        near = None
        if self.near_duplicates is not None:
            assert index.images is not None  # check_near_duplicates asks for cache_images
            before = sum(map(len, rows.values()))
            rows, groups, changed = separate_near_identical(
                rows, index.images, self.near_duplicates
            )
            dropped = before - sum(map(len, rows.values()))  # the rest moved between splits
            examples = [[index.relpaths[r] for r in g] for g in groups[:2]]
            near = (len(groups), dropped, changed - dropped, examples)
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
        summary = format_summary(listing, index, dups, labels, rows, near, self.built_index)
        rank_zero_only(log.info)(summary)

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
        return content_digest(dataset.rows, dataset.targets, index.digests)

    # -------------------------------------------------------------------------- loaders
    def _require(self, dataset: FaceDataset | None) -> FaceDataset:
        if dataset is None:
            raise RuntimeError("FaceDataModule.setup() must run before asking for a dataloader.")
        return dataset

    def _loader(
        self,
        dataset: FaceDataset,
        batch_size: int,
        loader: type[DataLoader] = DataLoader,
        num_workers: int | None = None,
        **kwargs: Any,
    ) -> DataLoader:
        workers = self.num_workers if num_workers is None else num_workers
        return loader(
            dataset,
            batch_size=batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=defer_stop_signals,
            **kwargs,
        )

    def train_dataloader(
        self, seed: int | None = None, num_workers: int | None = None
    ) -> DataLoader:
        """Batches in an order that depends only on the seed and the epoch, and that resumes
        mid-epoch where a checkpoint stopped (facediff.data.resumable). `seed` (default: the
        run's seed when unbalanced, as Lightning's DistributedSampler uses under DDP, else
        data.seed) and `num_workers` (default data.num_workers) let the evaluation classifier
        draw the same batches in any process."""
        dataset = self._require(self.train_set)
        if self.balanced:
            sampler: Sampler[int] = BalancedSampler(
                dataset.targets, seed=self.seed if seed is None else seed
            )
        else:
            if seed is None:
                seed = int(os.environ.get("PL_GLOBAL_SEED", self.seed))
            sampler = SeededRandomSampler(dataset, seed=seed)
        return self._loader(
            dataset,
            self.batch_size,
            loader=ResumableDataLoader,
            num_workers=num_workers,
            sampler=sampler,
            drop_last=len(dataset) > self.batch_size,
            collate_fn=build_train_collate(self.image_size, self.augment),  # augments the batch
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._require(self.val_set), self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._require(self.test_set), self.eval_batch_size, shuffle=False)
