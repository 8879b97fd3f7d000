"""Scoring samples of a checkpoint against the real data: the pieces of evaluate.py that embed
real images and generated ones and compute the metrics of one sampling setting."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from facediff.diffusion.settings import SamplingSettings
from facediff.evaluation import copies, metrics, sharpness
from facediff.evaluation.classifier import FaceClassifier, cache_key
from facediff.evaluation.features import FeatureSpace, cached, embed
from facediff.evaluation.images import iter_images
from facediff.inference.generator import Generator

log = logging.getLogger(__name__)

HEADLINE = ("class_consistency", "consistency_ratio", "fid", "fid_floor", "fid_ratio",
            "kid_mean", "kid_std", "kid_mean_floor", "sharpness")  # fmt: skip


def real_features(
    dm: Any, clf: FaceClassifier, clf_key: str, space: FeatureSpace, cache_dir: Path
) -> dict[str, Tensor]:
    """Classifier logits, features and labels of the real test split, features of the real
    training split, and features and labels of the validation split (the FID/KID floor: real
    faces against real faces); cached per data content, image and load size, classifier and
    space (with its weights file's hash)."""
    key = cache_key(
        {
            "space": space.name,
            "weights": space.weights_digest,
            "classifier": clf_key,
            "size": dm.image_size,
            "load_size": dm.load_size,
            "test": dm.split_digest("test"),
            "train": dm.split_digest("train"),
            "val": dm.split_digest("val"),
        }
    )

    def compute() -> dict[str, Tensor]:
        batch = dm.eval_batch_size
        out: dict[str, list[Tensor]] = {"test_logits": [], "test_features": [], "test_labels": []}
        for images, labels in iter_images(dm.eval_dataset("test"), batch):
            logits, features = embed(clf, space, images)
            out["test_logits"].append(logits)
            out["test_features"].append(features)
            out["test_labels"].append(labels)
        out["train_features"] = [space(x) for x, _ in iter_images(dm.eval_dataset("train"), batch)]
        val = list(iter_images(dm.eval_dataset("val"), batch))
        out["val_features"] = [space(x) for x, _ in val]
        out["val_labels"] = [y for _, y in val]
        return {name: torch.cat(parts) for name, parts in out.items()}

    return cached(cache_dir / "features" / f"real-{key}.pt", key, compute)


def real_pixels(dm: Any, size: int) -> dict[str, Tensor]:
    """Pixel vectors (copies.pixel_vectors at `size`) of the real training split, as is and
    mirrored, and of the validation split with its labels: the copy test's references and its
    floor; and the high-frequency power (sharpness.high_frequency_power) of every test and
    validation image. Read a batch at a time, so full-size images of a large split are never
    all held."""
    out: dict[str, list[Tensor]] = {"train": [], "train_mirrored": [], "val": [], "val_labels": [],
                                    "val_hf": [], "test_hf": [], "test_labels": []}  # fmt: skip
    batch = dm.eval_batch_size
    for images, _ in iter_images(dm.eval_dataset("train"), batch):
        out["train"].append(copies.pixel_vectors(images, size))
        out["train_mirrored"].append(copies.pixel_vectors(images.flip(-1), size))
    for images, labels in iter_images(dm.eval_dataset("val"), batch):
        out["val"].append(copies.pixel_vectors(images, size))
        out["val_labels"].append(labels)
        out["val_hf"].append(sharpness.high_frequency_power(images))
    for images, labels in iter_images(dm.eval_dataset("test"), batch):
        out["test_hf"].append(sharpness.high_frequency_power(images))
        out["test_labels"].append(labels)
    return {name: torch.cat(parts) for name, parts in out.items()}


def generate(
    gen: Generator,
    clf: FaceClassifier,
    space: FeatureSpace,
    n_per_class: int,
    settings: SamplingSettings,
    batch_size: int,
) -> dict[str, Any]:
    """Samples of every class with their classifier logits and features, and the time taken."""
    start = time.perf_counter()
    images, names = gen.sample(n_per_class=n_per_class, settings=settings, batch_size=batch_size)
    seconds = time.perf_counter() - start
    labels = torch.tensor([gen.class_id(n) for n in names])
    logits, features = embed(clf, space, images)
    return {
        "images": images,
        "labels": labels,
        "logits": logits,
        "features": features,
        "seconds_per_image": seconds / len(labels),
    }


@dataclass
class Scorer:
    """Everything that stays fixed while sampling settings vary: the model, the judges, the real
    features, the memorisation threshold and the copy test's real pixels (`real_pixels`).
    `scorer(n_per_class, settings)` draws samples and returns (their metrics, the samples with
    their embeddings)."""

    gen: Generator
    clf: FaceClassifier
    space: FeatureSpace
    real: dict[str, Tensor]
    threshold: float | None  # None: `quantile` of the real held-out faces' distances
    quantile: float
    profile_quantiles: tuple[float, ...]
    kid_subsets: int
    kid_subset_size: int
    batch_size: int
    pixels: dict[str, Tensor]
    copy_max_ratio: float
    copy_size: int

    def __post_init__(self) -> None:
        # Real held-out faces' distances to the training set (test, then validation): the cut,
        # the profile's quantiles and the floor.
        train = self.real["train_features"]
        test_nn, _ = metrics.nearest(self.real["test_features"], train)
        val_nn, _ = metrics.nearest(self.real["val_features"], train)
        self.held_out_nn = torch.cat([test_nn, val_nn])
        self.held_out_labels = torch.cat([self.real["test_labels"], self.real["val_labels"]])
        if self.threshold is None:  # every real face the model never trained on sets the cut
            self.threshold = metrics.memorisation_threshold(self.held_out_nn, self.quantile)
            self.floor_memorised = metrics.memorisation_floor(test_nn, val_nn, self.quantile)
        else:  # a given cut: every held-out face is out of sample
            self.floor_memorised = self.held_out_nn < self.threshold
        # The validation faces' copy ratios: the data set's own near-duplicates across splits.
        self.floor_copy_ratios, _, _ = copies.copy_ratios(
            self.pixels["val"], self.pixels["train"], self.pixels["train_mirrored"]
        )

    def __call__(
        self, n_per_class: int, settings: SamplingSettings
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        log.info("Sampling %d per class: %s", n_per_class, settings)
        fake = generate(self.gen, self.clf, self.space, n_per_class, settings, self.batch_size)
        fake["nn_distances"], fake["nn_indices"] = metrics.nearest(
            fake["features"], self.real["train_features"]
        )
        result = metrics.group_metrics(
            fake_logits=fake["logits"],
            fake_features=fake["features"],
            fake_labels=fake["labels"],
            real_logits=self.real["test_logits"],
            real_features=self.real["test_features"],
            real_labels=self.real["test_labels"],
            nn_distances=fake["nn_distances"],
            class_names=self.gen.class_names,
            threshold=self.threshold,
            kid_subsets=self.kid_subsets,
            kid_subset_size=self.kid_subset_size,
            floor_features=self.real["val_features"],
            floor_labels=self.real["val_labels"],
            floor_memorised=self.floor_memorised,
            floor_memorised_labels=self.held_out_labels,
        )
        result["memorised_profile"] = metrics.memorisation_profile(
            fake["nn_distances"], self.held_out_nn, self.profile_quantiles
        )
        fake["copy_ratios"], fake["copy_indices"], fake["copy_mirrored"] = copies.copy_ratios(
            copies.pixel_vectors(fake["images"], self.copy_size),
            self.pixels["train"],
            self.pixels["train_mirrored"],
        )
        copy = copies.copy_metrics(
            fake["copy_ratios"],
            fake["labels"],
            self.gen.class_names,
            self.copy_max_ratio,
            floor_ratios=self.floor_copy_ratios,
            floor_labels=self.pixels["val_labels"],
        )
        sharp = sharpness.sharpness_metrics(
            sharpness.high_frequency_power(fake["images"]),
            fake["labels"],
            self.pixels["test_hf"],
            self.pixels["test_labels"],
            self.gen.class_names,
            floor_power=self.pixels["val_hf"],
            floor_labels=self.pixels["val_labels"],
        )
        for extra in (copy, sharp):
            for name, per in extra.pop("per_class").items():
                result["per_class"][name].update(per)
            result.update(extra)
        result["seconds_per_image"] = fake["seconds_per_image"]
        log.info("  class consistency %.3f, FID %.3f (real-vs-real floor %.3f) (%.2f s/image)",
                 result["class_consistency"], result["fid"], result.get("fid_floor") or 0.0,
                 fake["seconds_per_image"])  # fmt: skip
        return result, fake

    def headline(self, n_per_class: int, settings: SamplingSettings) -> dict[str, Any]:
        """The main numbers of one sweep point."""
        result, _ = self(n_per_class, settings)
        return {k: result[k] for k in (*HEADLINE, "seconds_per_image")}
