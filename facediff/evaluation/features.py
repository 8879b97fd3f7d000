"""Feature spaces for FID/KID, diversity and memorisation, and the cache of real features.

Two spaces:
- Inception-v3 (the standard one, as in every FID table), through torchmetrics' wrapper of
  torch-fidelity's network. Its weights cannot be downloaded at run time here: give the local file
  `weights-inception-2015-12-05-6726825d.pth` as `features.inception_weights` (and
  `pip install torch-fidelity`);
- otherwise the project's own evaluation classifier (its penultimate layer). Numbers in that space
  are labelled `facediff-classifier:<key>` everywhere and are NOT comparable with published FIDs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from facediff.atomic import atomic_save
from facediff.caches import file_digest, keyed_payload, load_keyed
from facediff.evaluation.classifier import FaceClassifier, predict

log = logging.getLogger(__name__)

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
FEATURES_KIND = "real features"
FEATURES_VERSION = 1
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE
)


@dataclass
class FeatureSpace:
    """A named map from images (N, 3, H, W) in [0, 1] to features (N, D)."""

    name: str
    fn: Callable[[Tensor], Tensor]
    classifier: FaceClassifier | None = None  # set when these are its penultimate features
    weights_digest: str | None = None  # SHA-256 of the weights file, when one is used

    def __call__(self, images: Tensor) -> Tensor:
        return self.fn(images)


def embed(clf: FaceClassifier, space: FeatureSpace, images: Tensor) -> tuple[Tensor, Tensor]:
    """(classifier logits (N, K), features (N, D) in `space`), with one classifier pass when
    the space is `clf`'s own."""
    logits, features = predict(clf, images)
    return logits, features if space.classifier is clf else space(images)


def classifier_space(clf: FaceClassifier, key: str) -> FeatureSpace:
    """The classifier's penultimate features (the fallback space)."""
    return FeatureSpace(
        f"facediff-classifier:{key}", lambda images: predict(clf, images)[1], classifier=clf
    )


def check_inception_weights(weights: str | Path) -> Path:
    """The weights file's path; a FileNotFoundError saying where to get it when it is missing."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception weights not found at {path}. Download {INCEPTION_URL} on a machine "
            f"with internet access and copy it there (or point features.inception_weights at "
            "it); set features.inception_weights=null to use facediff's own classifier features "
            "instead (labelled as such, not comparable with published FIDs)."
        )
    return path


def inception_space(
    weights: str | Path, device: torch.device, batch_size: int = 64
) -> FeatureSpace:
    """Inception-v3 pool features (2048-d) from a local torch-fidelity weights file."""
    weights = check_inception_weights(weights)
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError as err:  # torchmetrics without torch-fidelity
        raise ImportError(
            "Inception features need torch-fidelity: pip install 'facediff[inception]'."
        ) from err
    net: nn.Module = NoTrainInceptionV3(
        name="inception-v3-compat",
        features_list=["2048"],
        feature_extractor_weights_path=str(weights),
    ).to(device)

    @torch.no_grad()
    def fn(images: Tensor) -> Tensor:
        out = [
            net((chunk * 255).round().to(torch.uint8).to(device)).float().cpu()
            for chunk in images.split(batch_size)
        ]
        return torch.cat(out)

    return FeatureSpace("inception-v3", fn, weights_digest=file_digest(weights))


def cached(path: Path, key: str, compute: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
    """`compute()` once, then read it back from `path` (a dict of tensors, saved with `key`).

    A truncated, foreign or other-key file is recomputed with a warning naming it; the result
    is written through a unique temporary file, so parallel jobs never corrupt each other's."""
    payload = load_keyed(path, FEATURES_KIND, FEATURES_VERSION, key, ["features"])
    if payload is not None and isinstance(payload["features"], dict):
        log.info("Loaded cached real-image features %s", path)
        return payload["features"]
    out = compute()
    atomic_save(keyed_payload(FEATURES_KIND, FEATURES_VERSION, key, features=out), path)
    return out
