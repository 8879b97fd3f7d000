"""The evaluation classifier: a small CNN trained on the real training split.

It has two jobs. Its predictions on generated faces give class consistency (does a sample look
like the group it was asked for?), and its penultimate features are the fallback feature space
for FID/KID, diversity and memorisation when no Inception weights are at hand. It shares nothing
with the diffusion model, and is cached on disk keyed by the data it was trained on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from facediff.atomic import atomic_save
from facediff.caches import read_cache, warn_rebuild
from facediff.evaluation.images import dataset_images

log = logging.getLogger(__name__)

CLASSIFIER_FORMAT = 1


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """Two conv3x3 -> BatchNorm -> ReLU, then a 2x2 max-pool."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class FaceClassifier(nn.Module):
    """CNN over images in [0, 1] of any size >= 2**len(widths); `features` is (N, widths[-1])."""

    def __init__(self, num_classes: int, widths: Iterable[int] = (32, 64, 128, 256)) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if num_classes < 2 or not widths:
            raise ValueError("FaceClassifier needs num_classes >= 2 and at least one width.")
        self.config = {"num_classes": num_classes, "widths": widths}
        chans = [3, *widths]
        self.body = nn.Sequential(*(conv_block(a, b) for a, b in itertools.pairwise(chans)))
        self.head = nn.Linear(widths[-1], num_classes)
        self.num_features = widths[-1]

    def features(self, images: Tensor) -> Tensor:
        """Penultimate features (N, D) of images (N, 3, H, W) in [0, 1]."""
        x = self.body(images * 2 - 1)
        return x.mean(dim=(2, 3))

    def forward(self, images: Tensor) -> Tensor:
        """Class logits (N, num_classes) of images in [0, 1]."""
        return self.head(F.dropout(self.features(images), 0.2, self.training))


def train_classifier(
    batches: Iterable[tuple[Tensor, Tensor]],
    num_classes: int,
    *,
    epochs: int,
    lr: float,
    widths: Iterable[int],
    seed: int,
    device: str | torch.device = "cpu",
) -> FaceClassifier:
    """Train on `batches` (re-iterated every epoch) of (images in [-1, 1], labels), as the
    datamodule's (augmented) training loader yields them. AdamW, cosine decay per epoch."""
    if epochs < 1:
        raise ValueError(f"classifier epochs must be >= 1, got {epochs}.")
    device = torch.device(device)
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # the caller's random stream stays as it was
        torch.manual_seed(seed)  # weights, dropout and (no workers) augmentation
        return _fit(batches, num_classes, epochs, lr, widths, device)


def _fit(
    batches: Iterable[tuple[Tensor, Tensor]],
    num_classes: int,
    epochs: int,
    lr: float,
    widths: Iterable[int],
    device: torch.device,
) -> FaceClassifier:
    clf = FaceClassifier(num_classes, widths).to(device)
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    for epoch in range(epochs):
        clf.train()
        total, n = 0.0, 0
        for x, y in batches:
            x, y = x.to(device).add(1).div(2), y.to(device)
            loss = F.cross_entropy(clf(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + loss.item() * len(y), n + len(y)
        sched.step()
        log.info("classifier epoch %d/%d: train loss %.4f", epoch + 1, epochs, total / max(1, n))
    return clf.eval()


def cache_key(fields: Mapping[str, Any]) -> str:
    """A short stable hash of JSON-able fields (what the classifier or features depend on)."""
    blob = json.dumps(fields, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def save_classifier(path: str | Path, clf: FaceClassifier, meta: Mapping[str, Any]) -> None:
    """Write weights, architecture and `meta` (class names, image size, data key, accuracy),
    through a unique temporary file and one rename: parallel jobs and DDP ranks writing the same
    cache never see or leave half a classifier."""
    blob = {
        "facediff_classifier": CLASSIFIER_FORMAT,
        "config": clf.config,
        "state_dict": clf.state_dict(),
        "meta": dict(meta),
    }
    atomic_save(blob, path)


def _blob_problem(blob: Any) -> str | None:
    """Why `blob` (as loaded) is not a saved facediff classifier, or None."""
    if not isinstance(blob, dict) or blob.get("facediff_classifier") != CLASSIFIER_FORMAT:
        return f"not a facediff evaluation classifier (format {CLASSIFIER_FORMAT})"
    missing = [k for k in ("config", "state_dict", "meta") if not isinstance(blob.get(k), dict)]
    return f"missing entries {missing}" if missing else None


def _from_blob(blob: dict[str, Any]) -> tuple[FaceClassifier, dict[str, Any]]:
    clf = FaceClassifier(**blob["config"])
    clf.load_state_dict(blob["state_dict"])
    return clf.eval(), dict(blob["meta"])


def _load_cached(file: Path, key: str) -> tuple[FaceClassifier, dict[str, Any]] | None:
    """The cached classifier with this key, or None (with a warning naming the file when it
    exists but is truncated, of another format or key, or does not fit its own config)."""
    blob = read_cache(file, "evaluation classifier", _blob_problem)
    if blob is None:
        return None
    if blob["meta"].get("key") != key:
        warn_rebuild(file, "evaluation classifier", "written for other settings (key mismatch)")
        return None
    try:
        return _from_blob(blob)
    except (TypeError, ValueError, RuntimeError) as exc:  # e.g. state_dict of other shapes
        warn_rebuild(file, "evaluation classifier", f"{type(exc).__name__}: {exc}")
        return None


def load_classifier(path: str | Path) -> tuple[FaceClassifier, dict[str, Any]]:
    """Load a saved classifier (no code from the file runs); a clear error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Classifier {path} does not exist. Train one with "
            "`python evaluate.py task=train_classifier ckpt=...`, or set classifier.path=null "
            "to train and cache one automatically."
        )
    blob = torch.load(path, map_location="cpu", weights_only=True)
    problem = _blob_problem(blob)
    if problem is not None:
        raise ValueError(
            f"{path} is {problem}. Train one with "
            "`python evaluate.py task=train_classifier ckpt=...`."
        )
    return _from_blob(blob)


@torch.no_grad()
def predict(clf: FaceClassifier, images: Tensor, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """(logits (N, K), features (N, D)) of images (N, 3, H, W) in [0, 1], on clf's device."""
    device = next(clf.parameters()).device
    logits, feats = [], []
    for chunk in images.split(batch_size):
        f = clf.features(chunk.to(device))
        feats.append(f.float().cpu())
        logits.append(clf.head(f).float().cpu())
    return torch.cat(logits), torch.cat(feats)


def training_data_fields(dm: Any) -> dict[str, Any]:
    """Everything about a FaceDataModule's training data that changes a classifier trained on
    it: the split's content and labels, the classes, the pixels (load and image size) and what
    its loader (`classifier_batches`) does (batch size, augmentation, balanced sampling, the
    order's seed, no workers)."""
    augment = dm.augment
    return {
        "class_names": dm.class_names,
        "image_size": dm.image_size,
        "load_size": dm.load_size,
        "train": dm.split_digest("train"),
        "batch_size": dm.batch_size,
        "augment": dataclasses.asdict(augment) if dataclasses.is_dataclass(augment) else augment,
        "balanced": dm.balanced,
        "sampler_seed": dm.seed,
        "workers": 0,
    }


def classifier_batches(dm: Any) -> Iterable[tuple[Tensor, Tensor]]:
    """The augmented training split for the evaluation classifier: in the order of data.seed
    and augmented in this process (no workers), so evaluate.py and a training run's
    `eval_metrics` callback (whose run seed and workers differ) train the same classifier."""
    return dm.train_dataloader(seed=dm.seed, num_workers=0)


def classifier_for(
    dm: Any,
    cache_dir: str | Path,
    *,
    epochs: int,
    lr: float,
    widths: Iterable[int],
    seed: int,
    path: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> tuple[FaceClassifier, dict[str, Any]]:
    """The evaluation classifier of a set-up FaceDataModule `dm`: loaded from `path`, else from
    the cache (keyed by `training_data_fields` and these settings; a corrupt or mismatched
    cache file is retrained with a warning), else trained on the augmented training split,
    measured on the test split and cached. The settings are conf/classifier/default.yaml's.

    Returns the classifier (in eval mode, on `device`) and its meta (key, accuracy, ...).
    """
    settings = {"epochs": epochs, "lr": lr, "widths": [int(w) for w in widths], "seed": seed}
    data = training_data_fields(dm)
    key = cache_key({"format": CLASSIFIER_FORMAT, **data, **settings})
    file = Path(path) if path else Path(cache_dir) / "classifiers" / f"classifier-{key}.pt"
    loaded = load_classifier(file) if path else _load_cached(file, key)
    if loaded is not None:
        clf, meta = loaded
        if meta.get("class_names") != dm.class_names or meta.get("image_size") != dm.image_size:
            raise ValueError(
                f"Classifier {file} was trained for classes {meta.get('class_names')} at "
                f"{meta.get('image_size')} px, not {dm.class_names} at {dm.image_size} px. "
                "Set classifier.path=null to train a matching one."
            )
        log.info("Loaded evaluation classifier %s", file)
        return clf.to(device), meta
    log.info("Training the evaluation classifier (%d epochs); it is cached as %s", epochs, file)
    clf = train_classifier(classifier_batches(dm), dm.num_classes, device=device, **settings)
    images, labels = dataset_images(dm.eval_dataset("test"), dm.eval_batch_size)
    logits, _ = predict(clf, images)
    meta = {
        **data,
        **settings,
        "key": key,
        "test_accuracy": float((logits.argmax(1) == labels).float().mean()),
    }
    save_classifier(file, clf, meta)
    log.info("Classifier accuracy on the real test split: %.3f", meta["test_accuracy"])
    return clf, meta
