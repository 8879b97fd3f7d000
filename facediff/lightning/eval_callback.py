"""A cheap evaluation during training: class consistency and KID of EMA samples.

Logged as `eval/class_consistency` and `eval/kid` (classifier features, against the real
validation split), so either can be the checkpoint monitor or the sweepers' objective:

    python train.py callbacks.model_checkpoint.monitor=eval/class_consistency \
        callbacks.model_checkpoint.mode=max callbacks.model_checkpoint.every_n_epochs=10 \
        callbacks.eval_metrics.max_time_share=null optimized_metric=eval/class_consistency

(ModelCheckpoint's every_n_epochs must match this callback's, since the metric exists only in
those epochs.) The classifier lives in this callback, not in the LightningModule, so EMA never
averages it and checkpoints never carry it. Under DDP every rank computes the same numbers
from the same seed: nothing to synchronise.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch

from facediff.diffusion.sampling import sampling_precision
from facediff.diffusion.settings import SamplingSettings
from facediff.evaluation import metrics
from facediff.evaluation.classifier import FaceClassifier, classifier_for, predict
from facediff.evaluation.images import iter_images
from facediff.lightning.callbacks import (
    EMAValidationCallback,
    as_settings,
    callback_work,
    module_generator,
)
from facediff.lightning.rank_sync import rank_zero_first
from facediff.lightning.time_share import TimeShare

log = logging.getLogger(__name__)


class EvalMetrics(EMAValidationCallback):
    """Every `every_n_epochs` epochs, sample `n_per_class` images per class from the EMA weights
    and log their class consistency and KID against the validation split.

    Args:
        cache_dir: where the evaluation classifier is cached (trained at the start of fit on
            the training split when missing; evaluate.py reuses the same cache).
        sampling: sampler settings (conf/sampling/default.yaml's unless overridden).
        classifier: `classifier_for` settings (conf/classifier/default.yaml).
        max_time_share: cap on this callback's share of the run's wall time, its classifier's
            preparation included (see EMAValidationCallback); null: no cap.
    """

    name = "eval_metrics"

    def __init__(
        self,
        cache_dir: str,
        sampling: Mapping[str, Any] | SamplingSettings,
        classifier: Mapping[str, Any],
        every_n_epochs: int,
        n_per_class: int,
        kid_subset_size: int,
        max_time_share: float | None = None,
    ) -> None:
        if every_n_epochs < 1 or n_per_class < 2:
            raise ValueError("callbacks.eval_metrics: need every_n_epochs >= 1, n_per_class >= 2.")
        self.cache_dir = cache_dir
        self.every_n_epochs = every_n_epochs
        self.n_per_class = n_per_class
        self.sampling = as_settings(sampling, self.name)
        self.kid_subset_size = kid_subset_size
        self.classifier_settings = dict(classifier)
        self.time_share = TimeShare(max_time_share)
        self.clf: FaceClassifier | None = None
        self.val_features: torch.Tensor | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)  # sampling steps against T, before any work
        if stage != "fit":
            return
        # every rank must sample alike: rank 0 decides what precision "auto" means (a timed
        # probe on a CPU, which could differ between ranks) and the others take its choice
        choice = None
        if trainer.is_global_zero:
            choice = sampling_precision(self.sampling.precision, pl_module.device)
        self.sampling = self.sampling.replace(precision=trainer.strategy.broadcast(choice, src=0))
        if self.clf is not None:
            return
        with callback_work(self.time_share, one_off=True):
            self._prepare(trainer, pl_module)

    def _prepare(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The classifier (trained and cached by rank 0 when missing) and the real features."""
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "split_digest"):
            raise ValueError("callbacks.eval_metrics needs facediff's FaceDataModule.")

        def get() -> tuple[FaceClassifier, dict[str, Any]]:
            return classifier_for(
                dm, self.cache_dir, device=pl_module.device, **self.classifier_settings
            )

        # rank 0 trains and caches it, the others then load it; a failure stops every rank
        self.clf, meta = rank_zero_first(
            trainer.strategy,
            get,
            "preparing the evaluation classifier",
            hint="Fix: put paths.cache_dir on a file system that every node sees.",
        )
        self.val_features = torch.cat(
            [
                predict(self.clf, x)[1]
                for x, _ in iter_images(dm.eval_dataset("val"), dm.eval_batch_size)
            ]
        )
        log.info("eval_metrics: classifier %s (real test accuracy %.3f)", meta["key"],
                 meta["test_accuracy"])  # fmt: skip

    def on_ema_validation(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert self.clf is not None and self.val_features is not None
        gen = module_generator(pl_module)  # validation runs in eval mode anyway
        images, names = gen.sample(n_per_class=self.n_per_class, settings=self.sampling)
        labels = torch.tensor([gen.class_id(n) for n in names])
        logits, features = predict(self.clf, images)
        consistency, _ = metrics.accuracy(logits, labels, len(gen.class_names))
        kid_mean, _ = metrics.kid(
            self.val_features, features, subsets=50, subset_size=self.kid_subset_size
        )
        pl_module.log("eval/class_consistency", consistency, on_epoch=True, batch_size=1)
        pl_module.log("eval/kid", kid_mean, on_epoch=True, batch_size=1)
