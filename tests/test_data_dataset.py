"""FaceDataset output format, augmentation randomness and the no-cache decode path."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from facediff.data.dataset import FaceDataset
from facediff.data.transforms import (
    Augment,
    build_eval_transform,
    build_train_collate,
    build_train_transform,
)

FULL = {
    "hflip": 0.5,
    "rotation": 10,
    "crop_scale": [0.7, 1.0],
    "color_jitter": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.05},
}


def _images(n: int = 4, size: int = 20) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)


def test_item_format_and_range() -> None:
    images = _images()
    images[0] = 0
    images[1] = 255
    dataset = FaceDataset([0, 1, 2, 1], build_eval_transform(16), images=images)
    for i in range(4):
        image, label = dataset[i]
        assert image.shape == (3, 16, 16) and image.dtype == torch.float32
        assert image.min() >= -1 and image.max() <= 1
        assert label.dtype == torch.int64 and label.ndim == 0
    assert torch.all(dataset[0][0] == -1) and torch.all(dataset[1][0] == 1)
    assert dataset[2][1].item() == 2


def test_train_augmentation_is_fresh_every_batch_eval_is_fixed() -> None:
    images = _images()
    augment = Augment.from_config(FULL)
    train = FaceDataset([0] * 4, build_train_transform(16, augment), images=images)
    assert torch.equal(train[0][0], images[0])  # the batch is augmented, not the image
    collate = build_train_collate(16, augment)
    batches = [collate([train[i] for i in range(4)])[0] for _ in range(4)]
    assert all(not torch.equal(batches[0], other) for other in batches[1:])
    assert all(b.min() >= -1 and b.max() <= 1 and b.shape == (4, 3, 16, 16) for b in batches)
    evaluation = FaceDataset([0] * 4, build_eval_transform(16), images=images)
    assert torch.equal(evaluation[0][0], evaluation[0][0])


@pytest.mark.parametrize("key", list(FULL))
def test_each_augmentation_alone_is_random(key: str) -> None:
    images = _images(1, 24)
    collate = build_train_collate(16, Augment.from_config({key: FULL[key]}))
    torch.manual_seed(0)
    reads = [collate([(images[0], torch.tensor(0))])[0] for _ in range(12)]
    assert any(not torch.equal(reads[0], other) for other in reads[1:])


def test_everything_off_equals_eval() -> None:
    images = _images(1, 24)
    off = {"hflip": 0, "rotation": 0, "crop_scale": None, "color_jitter": None}
    for config in (None, off, {"color_jitter": {"brightness": 0}}):
        augment = Augment.from_config(config)
        train = build_train_transform(16, augment)
        assert torch.equal(train(images[0]), build_eval_transform(16)(images[0]))
        assert build_train_collate(16, augment) is None


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"flip": 0.5}, "Unknown augment key"),
        ({"hflip": 1.5}, "augment.hflip=1.5 is invalid"),
        ({"rotation": -3}, "augment.rotation=-3 is invalid"),
        ({"crop_scale": [0.9, 0.5]}, "crop_scale=\\[0.9, 0.5\\] is invalid"),
        ({"crop_scale": 0.8}, "crop_scale=0.8 is invalid"),
        ({"color_jitter": {"tint": 0.1}}, "Unknown augment.color_jitter key"),
        ({"color_jitter": {"hue": 0.9}}, "color_jitter.hue=0.9 is invalid"),
    ],
)
def test_bad_augment_config(config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Augment.from_config(config)


def test_rows_select_from_a_shared_table() -> None:
    images = _images(5)
    dataset = FaceDataset([0, 1, 2, 3, 4], build_eval_transform(20), images=images, rows=[4, 1])
    assert len(dataset) == 2 and dataset.targets == [4, 1]
    assert dataset[0][1].item() == 4
    assert torch.allclose(dataset[1][0], images[1].float() / 127.5 - 1, atol=1e-6)


def test_path_mode_substitutes_broken_files(
    tmp_path: Path, write_image, caplog: pytest.LogCaptureFixture
) -> None:
    paths = [write_image(tmp_path / f"{i}.png", seed=i, size=(30, 24)) for i in range(3)]
    dataset = FaceDataset([0, 1, 2], build_eval_transform(16), paths=paths, load_size=20)
    image, label = dataset[1]
    assert image.shape == (3, 16, 16) and label.item() == 1
    paths[1].write_bytes(b"changed since indexing")
    with caplog.at_level(logging.WARNING, logger="facediff.data"):
        for _ in range(3):
            image, label = dataset[1]
            assert image.shape == (3, 16, 16) and label.item() in (0, 2)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "1.png" in warnings[0] and "1 failure(s)" in warnings[0]
    for path in paths:
        path.write_bytes(b"")
    with pytest.raises(RuntimeError, match="None of the 3 images"):
        dataset[0]


def test_dataset_argument_errors() -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        FaceDataset([0], build_eval_transform(8))
    with pytest.raises(ValueError, match="2 labels for a table of 4"):
        FaceDataset([0, 1], build_eval_transform(8), images=_images())
