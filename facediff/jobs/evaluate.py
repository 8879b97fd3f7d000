"""`run(cfg)`: what evaluate.py does with a composed conf/evaluate.yaml.

    task=train_classifier   train (or load) the evaluation classifier of the run's data, report
                            its accuracy on the real test split, and stop;
    task=evaluate           generate `n_per_class` samples per class, embed them and the real
                            test and training splits, and write metrics.json, report.md and the
                            figures (plus a sampler / step-count and a guidance sweep if asked).

The data is the training run's own (its config is stored in the checkpoint, so the test split is
the one the model never saw); any non-null key under `data` overrides it (e.g. data.root=...).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from facediff.checkpoint import CheckpointError
from facediff.data.build import build_datamodule
from facediff.evaluation import metrics, report
from facediff.evaluation.classifier import FaceClassifier, cache_key, classifier_for
from facediff.evaluation.features import (
    FeatureSpace,
    cached,
    check_inception_weights,
    classifier_space,
    embed,
    inception_space,
)
from facediff.evaluation.images import iter_images
from facediff.inference.generator import Generator, resolve_device
from facediff.lightning.loggers import build_logger, finish_loggers
from facediff.untrusted import UnsafeValueError

log = logging.getLogger(__name__)

TASKS = ("evaluate", "train_classifier")
SAMPLING_KEYS = ("sampler", "steps", "guidance", "eta", "seed", "batch_size")


def data_config(saved: dict[str, Any] | None, overrides: dict[str, Any], image_size: int) -> dict:
    """The run's data config with the non-null `overrides` applied, at the model's image size."""
    if not isinstance(saved, dict):
        raise ValueError(
            "This checkpoint does not record its data config (it predates facediff's evaluation). "
            "Retrain it, or evaluate a checkpoint written by this version of train.py."
        )
    merged = {**saved, **{k: v for k, v in overrides.items() if v is not None}}
    return {**merged, "image_size": image_size}


def check_config(cfg: DictConfig, gen: Generator) -> list[dict[str, Any]]:
    """Fail fast, before any data is read or sample drawn; returns the sweep points."""
    if cfg.task not in TASKS:
        raise ValueError(f"Unknown task={cfg.task!r}; choose one of {TASKS}.")
    if cfg.n_per_class < 2:
        raise ValueError("n_per_class must be >= 2 (FID and KID need two samples per class).")
    gen.check_settings(cfg.sampler, int(cfg.steps))
    if cfg.features.inception_weights:
        check_inception_weights(cfg.features.inception_weights)
    points = [
        {**sampling(cfg), "sampler": p.sampler, "steps": int(p.steps)}
        for p in cfg.sweep.samplers or []
    ] + [{**sampling(cfg), "guidance": float(w)} for w in cfg.sweep.guidance or []]
    for point in points:
        gen.check_settings(point["sampler"], point["steps"])
    return points


def sampling(cfg: DictConfig) -> dict[str, Any]:
    return {k: cfg[k] for k in SAMPLING_KEYS}


def real_features(
    dm: Any, clf: FaceClassifier, clf_key: str, space: FeatureSpace, cache_dir: Path
) -> dict[str, Tensor]:
    """Classifier logits, features and labels of the real test split, and features of the real
    training split; cached per data content, image size, classifier and feature space."""
    key = cache_key(
        {
            "space": space.name,
            "classifier": clf_key,
            "size": dm.image_size,
            "test": dm.split_digest("test"),
            "train": dm.split_digest("train"),
        }
    )

    def compute() -> dict[str, Tensor]:
        out: dict[str, list[Tensor]] = {"test_logits": [], "test_features": [], "test_labels": []}
        for images, labels in iter_images(dm.eval_dataset("test")):
            logits, features = embed(clf, space, images)
            out["test_logits"].append(logits)
            out["test_features"].append(features)
            out["test_labels"].append(labels)
        out["train_features"] = [space(x) for x, _ in iter_images(dm.eval_dataset("train"))]
        return {name: torch.cat(parts) for name, parts in out.items()}

    return cached(cache_dir / "features" / f"real-{key}.pt", compute)


def generate(
    gen: Generator, clf: FaceClassifier, space: FeatureSpace, n_per_class: int, settings: dict
) -> dict[str, Any]:
    """Samples of every class with their classifier logits and features, and the time taken."""
    start = time.perf_counter()
    images, names = gen.sample(n_per_class=n_per_class, **settings)
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


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate (or only train the classifier); returns what was written to metrics.json."""
    device = resolve_device(cfg.device)
    gen = Generator.from_checkpoint(cfg.ckpt, device=device)
    points = check_config(cfg, gen)
    overrides = OmegaConf.to_container(cfg.data, resolve=True)
    try:  # facediff's own FaceDataModule from checked plain values, never a stored _target_
        dm = build_datamodule(data_config(gen.meta.get("data"), overrides, gen.image_size))
    except UnsafeValueError as err:
        raise CheckpointError(
            f"Refusing the data config stored in {cfg.ckpt} (with your data.* overrides): {err}"
        ) from err
    if dm.class_names != gen.class_names:
        raise ValueError(
            f"The data's classes {dm.class_names} are not the model's {gen.class_names}. "
            "Point data.root at the data the model was trained on."
        )
    dm.prepare_data()
    dm.setup("fit")
    cache_dir = Path(cfg.paths.cache_dir)
    clf, clf_meta = classifier_for(dm, cache_dir, device=device, **cfg.classifier)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.task == "train_classifier":
        (out / "classifier.json").write_text(json.dumps(clf_meta, indent=2) + "\n")
        log.info("Classifier accuracy on the real test split: %.3f", clf_meta["test_accuracy"])
        return clf_meta

    weights = cfg.features.inception_weights
    space = inception_space(weights, device) if weights else classifier_space(clf, clf_meta["key"])
    real = real_features(dm, clf, clf_meta["key"], space, cache_dir)
    threshold = cfg.memorisation.threshold
    if threshold is None:
        threshold = metrics.memorisation_threshold(
            real["test_features"], real["train_features"], cfg.memorisation.quantile
        )

    def evaluate(n_per_class: int, settings: dict) -> tuple[dict, dict]:
        log.info("Sampling %d per class: %s", n_per_class, settings)
        fake = generate(gen, clf, space, n_per_class, settings)
        fake["nn_distances"], fake["nn_indices"] = metrics.nearest(
            fake["features"], real["train_features"]
        )
        result = metrics.group_metrics(
            fake_logits=fake["logits"],
            fake_features=fake["features"],
            fake_labels=fake["labels"],
            real_logits=real["test_logits"],
            real_features=real["test_features"],
            real_labels=real["test_labels"],
            nn_distances=fake["nn_distances"],
            class_names=gen.class_names,
            threshold=float(threshold),
            kid_subsets=cfg.kid.subsets,
            kid_subset_size=cfg.kid.subset_size,
        )
        result["seconds_per_image"] = fake["seconds_per_image"]
        log.info("  class consistency %.3f, FID %.3f (%.2f s/image)", result["class_consistency"],
                 result["fid"], fake["seconds_per_image"])  # fmt: skip
        return result, fake

    result, fake = evaluate(cfg.n_per_class, sampling(cfg))
    result.update(
        feature_extractor=space.name,
        checkpoint={"path": str(cfg.ckpt), "global_step": gen.meta.get("global_step")},
        sampling=sampling(cfg),
        classifier=clf_meta,
        sweep=[
            {**point, **_headline(evaluate(cfg.sweep.n_per_class, point)[0])} for point in points
        ],
    )
    train_set = dm.eval_dataset("train")
    pairs = report.closest_pairs(
        fake["images"],
        fake["nn_distances"],
        fake["nn_indices"],
        lambda i: train_set[i][0].add(1).div(2),
        cfg.memorisation.n_pairs,
    )
    figures = report.write_report(
        out, result, gen.class_names, fake["images"], fake["labels"], pairs
    )
    keep = ("labels", "logits", "features", "nn_distances", "nn_indices")
    real_test = {f"real_{k}": real[f"test_{k}"] for k in ("labels", "logits", "features")}
    torch.save({**{k: fake[k] for k in keep}, **real_test}, out / "samples.pt")  # for own checks
    log_to_loggers(cfg, result, figures)
    log.info("Wrote %s/metrics.json and %s/report.md", out, out)
    return result


def _headline(result: dict) -> dict:
    keys = ("class_consistency", "consistency_ratio", "fid", "kid_mean", "kid_std")
    return {k: result[k] for k in (*keys, "seconds_per_image")}


def log_to_loggers(cfg: DictConfig, result: dict, figures: dict[str, Path]) -> None:
    """Send the headline numbers and the figures to W&B when `logger` is configured."""
    from lightning.pytorch.loggers import WandbLogger

    logger = build_logger(cfg.get("logger"))
    if not isinstance(logger, WandbLogger):
        return
    try:
        flat = {f"eval/{k}": v for k, v in result.items() if isinstance(v, (int, float))}
        for name, per in result["per_class"].items():
            flat.update({f"eval/{name}/{k}": v for k, v in per.items() if isinstance(v, float)})
        logger.log_metrics(flat)
        for key, path in figures.items():
            logger.log_image(key=f"eval/{key}", images=[str(path)], caption=[path.name])
    finally:
        finish_loggers([logger])
