"""`run(cfg)`: what evaluate.py does with a composed conf/evaluate.yaml.

    task=train_classifier   train (or load) the evaluation classifier of the run's data, report
                            its accuracy on the real test split, and stop;
    task=evaluate           generate `n_per_class` samples per class, embed them and the real
                            test and training splits, and write metrics.json, report.md and the
                            figures (plus a sampler / step-count and a guidance sweep if asked;
                            the main result is written before the sweep starts, and a failing
                            sweep point is recorded as `sweep_error` beside the points before it).

The data is the training run's own (its config is stored in the checkpoint, so the test split is
the one the model never saw); any non-null key under `data` overrides it (e.g. data.root=...).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from facediff.checkpoint import CheckpointError
from facediff.config_checks import check_evaluate_config
from facediff.data.build import build_datamodule
from facediff.data.datamodule import FaceDataModule
from facediff.diffusion.settings import SamplingSettings
from facediff.evaluation import report
from facediff.evaluation.classifier import classifier_for
from facediff.evaluation.features import (
    check_inception_weights,
    classifier_space,
    inception_space,
)
from facediff.inference.generator import Generator, resolve_device
from facediff.jobs.scoring import Scorer, real_features, real_pixels
from facediff.lightning.loggers import build_logger, finish_loggers
from facediff.untrusted import UnsafeValueError

log = logging.getLogger(__name__)

TASKS = ("evaluate", "train_classifier")


def data_config(saved: dict[str, Any] | None, overrides: dict[str, Any], image_size: int) -> dict:
    """The run's data config with the non-null `overrides` applied, at the model's image size."""
    if not isinstance(saved, dict):
        raise ValueError(
            "This checkpoint does not record its data config (it predates facediff's evaluation). "
            "Retrain it, or evaluate a checkpoint written by this version of train.py."
        )
    merged = {**saved, **{k: v for k, v in overrides.items() if v is not None}}
    return {**merged, "image_size": image_size}


def check_config(
    cfg: DictConfig, gen: Generator
) -> tuple[SamplingSettings, list[SamplingSettings]]:
    """Fail fast, before any data is read or sample drawn; returns the main sampling settings
    and those of the sweep points (each a change of the main ones)."""
    if cfg.task not in TASKS:
        raise ValueError(f"Unknown task={cfg.task!r}; choose one of {TASKS}.")
    settings = gen.settings(SamplingSettings.from_config(cfg, num_steps=gen.num_steps))
    if cfg.features.inception_weights:
        check_inception_weights(cfg.features.inception_weights)
    T = gen.num_steps
    points = [
        gen.settings(
            SamplingSettings.from_config({"sampler": p.sampler, "steps": p.steps}, settings, T)
        )
        for p in cfg.sweep.samplers or []
    ] + [
        gen.settings(SamplingSettings.from_config({"guidance": float(w)}, settings, T))
        for w in cfg.sweep.guidance or []
    ]
    # Each setting once; the main one only where the sweep draws another sample size (the main
    # run's numbers are that point's otherwise: the report's curves join it to the sweep's).
    skip = {settings} if cfg.sweep.n_per_class == cfg.n_per_class else set()
    unique = [p for p in dict.fromkeys(points) if p not in skip]
    return settings, unique


def build_data(cfg: DictConfig, gen: Generator) -> FaceDataModule:
    """The training run's data (its config from the checkpoint, `data.*` overrides applied),
    set up; facediff's own FaceDataModule from checked plain values, never a stored _target_."""
    overrides = OmegaConf.to_container(cfg.data, resolve=True)
    try:
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
    return dm


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate (or only train the classifier); returns what was written to metrics.json."""
    check_evaluate_config(cfg)  # the values typed, before the checkpoint is read
    device = resolve_device(cfg.device)
    gen = Generator.from_checkpoint(cfg.ckpt, device=device)
    settings, points = check_config(cfg, gen)
    dm = build_data(cfg, gen)
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
    mem = cfg.memorisation
    threshold = None if mem.threshold is None else float(mem.threshold)
    score = Scorer(gen, clf, space, real, threshold, float(mem.quantile), tuple(mem.profile),
                   cfg.kid.subsets, cfg.kid.subset_size, cfg.batch_size,
                   pixels=real_pixels(dm, mem.copy_size), copy_max_ratio=float(mem.copy_ratio),
                   copy_size=mem.copy_size)  # fmt: skip

    def record(s: SamplingSettings) -> dict[str, Any]:  # as metrics.json lists settings
        return {**s.to_dict(), "batch_size": cfg.batch_size}

    result, fake = score(cfg.n_per_class, settings)
    result.update(
        feature_extractor=space.name,
        checkpoint={"path": str(cfg.ckpt), "global_step": gen.meta.get("global_step")},
        sampling=record(settings),
        classifier=clf_meta,
        data="demo" if dm.demo else dm.layout,  # whose labels the report's caveats are about
        sweep=[],
    )
    write = write_outputs(cfg, out, fake, real, score.held_out_nn, dm, gen.class_names)
    figures = write(result)  # the main result is on disk before any sweep point is drawn
    log.info("Wrote %s/metrics.json and %s/report.md", out, out)
    for point in points:
        try:
            row = {
                **record(point),
                "n_per_class": cfg.sweep.n_per_class,
                **score.headline(cfg.sweep.n_per_class, point),
            }
        except Exception as err:  # keep the points done, say which failed, and fail
            result["sweep_error"] = {
                "point": record(point),
                "error": f"{type(err).__name__}: {err}",
            }
            write(result)
            log.error("Sweep point %s failed; metrics.json keeps the main result and the "
                      "%d point(s) before it.", record(point), len(result["sweep"]))  # fmt: skip
            raise
        result["sweep"].append(row)
    if points:
        figures = write(result)
        log.info("Added the sweep to %s/metrics.json and %s/report.md", out, out)
    log_to_loggers(cfg, result, figures)
    return result


def write_outputs(
    cfg: DictConfig,
    out: Path,
    fake: dict[str, Any],
    real: dict[str, Any],
    held_out_nn: torch.Tensor,
    dm: FaceDataModule,
    class_names: list[str],
) -> Callable[[dict[str, Any]], dict[str, Path]]:
    """Write samples.pt (with the real held-out faces' distances to the training set, test then
    validation, which set the memorisation cut and profile); returns `write(result)`, which
    (re)writes metrics.json, report.md and the figures of `result` and returns their paths."""
    keep = ("labels", "logits", "features", "nn_distances", "nn_indices", "copy_ratios",
            "copy_indices", "copy_mirrored")  # fmt: skip
    real_test = {f"real_{k}": real[f"test_{k}"] for k in ("labels", "logits", "features")}
    saved = {**{k: fake[k] for k in keep}, **real_test, "held_out_nn_distances": held_out_nn}
    torch.save(saved, out / "samples.pt")  # for own checks
    train_set = dm.eval_dataset("train")
    index, mirrored = fake["copy_indices"], fake["copy_mirrored"]

    def nearest_train_image(i: int) -> torch.Tensor:  # as matched: mirrored if that was nearer
        image = train_set[int(index[i])][0].add(1).div(2)
        return image.flip(-1) if bool(mirrored[i]) else image

    # the samples nearest to being copies, by the pixel test, beside their training image
    pairs = report.closest_pairs(
        fake["images"], fake["copy_ratios"], nearest_train_image, cfg.memorisation.n_pairs
    )

    def write(result: dict[str, Any]) -> dict[str, Path]:
        return report.write_report(out, result, class_names, fake["images"], fake["labels"], pairs)

    return write


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
