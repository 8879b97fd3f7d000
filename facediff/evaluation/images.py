"""Reading the images of a dataset split for evaluation: float in [0, 1], in order."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset


def iter_images(dataset: Dataset, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches (images (B,3,H,W) in [0, 1], labels (B,)) of a [-1, 1] dataset, in order
    (`batch_size`: data.eval_batch_size, which bounds the memory of evaluation's real-image
    passes). The loader's own generator keeps its seed draw off the global stream that training
    uses."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator())
    for images, labels in loader:
        yield images.add(1).div(2), labels


def dataset_images(dataset: Dataset, batch_size: int) -> tuple[Tensor, Tensor]:
    """All images (N,3,H,W) in [0, 1] and labels (N,) of a dataset; an error when it is empty."""
    batches = list(iter_images(dataset, batch_size))
    if not batches:
        raise ValueError(
            "This split of the data is empty: enlarge its fraction in data.split or add images."
        )
    images, labels = zip(*batches, strict=True)
    return torch.cat(images), torch.cat(labels)
