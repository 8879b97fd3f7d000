"""Batch augmentation: the affine maps' conventions and ranges, and the collate's output."""

from __future__ import annotations

import math

import pytest
import torch

from facediff.data.batch_augment import TrainCollate, affine_params, resample
from facediff.data.transforms import build_eval_transform


@pytest.fixture
def batch() -> torch.Tensor:
    """(4, 3, 16, 16) float in [0, 1]."""
    return torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _theta(angle_deg: float = 0.0, side: float = 1.0, centre=(0.0, 0.0), flip=False):
    a = math.radians(angle_deg)
    sx = -1.0 if flip else 1.0
    return torch.tensor(
        [
            [
                [side * math.cos(a) * sx, -side * math.sin(a), centre[0]],
                [side * math.sin(a) * sx, side * math.cos(a), centre[1]],
            ]
        ]
    )


def test_identity_map_keeps_every_pixel(batch: torch.Tensor) -> None:
    out = resample(batch, _theta().expand(4, 2, 3), 16)
    torch.testing.assert_close(out, batch, atol=1e-5, rtol=0)


def test_flip_and_quarter_turn_match_torch(batch: torch.Tensor) -> None:
    flipped = resample(batch, _theta(flip=True).expand(4, 2, 3), 16)
    torch.testing.assert_close(flipped, batch.flip(-1), atol=1e-5, rtol=0)
    turned = resample(batch, _theta(90).expand(4, 2, 3), 16)
    torch.testing.assert_close(turned, batch.rot90(1, dims=(2, 3)), atol=1e-5, rtol=0)


def test_crop_reads_the_region_it_names() -> None:
    image = torch.zeros(1, 3, 16, 16)
    image[..., :8, :8] = 1.0  # top-left quadrant (y down, x right)
    out = resample(image, _theta(side=0.5, centre=(-0.5, -0.5)), 16)  # 2x magnified
    torch.testing.assert_close(out[..., :14, :14], torch.ones(1, 3, 14, 14))
    assert out.min() > 0.5  # only the last row and column blend with the next quadrant


def test_large_shrink_is_antialiased() -> None:
    checker = (torch.arange(64).view(1, -1) + torch.arange(64).view(-1, 1)) % 2
    image = (checker * 255).to(torch.uint8).expand(3, 64, 64)
    out = TrainCollate(16, (0.8, 1.0), 0.5, 10.0, None)([(image, torch.tensor(0))])[0]
    assert out.std() < 0.1 and out.mean().abs() < 0.05  # flat grey in [-1, 1], not a moire


def test_flips_alone_give_the_evaluation_pixels() -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        image = torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8, generator=generator)
        reference = build_eval_transform(16)(image)
        collate = TrainCollate(16, None, 1.0, 0.0, None)
        flipped = collate([(image, torch.tensor(0))])[0][0]
        one_level = 2 / 255 + 1e-5  # torchvision rounds its resize to uint8; float32 slack
        torch.testing.assert_close(flipped, reference.flip(-1), atol=one_level, rtol=0)


def test_affine_params_stay_within_their_ranges() -> None:
    torch.manual_seed(0)
    theta = affine_params(2000, (0.5, 0.9), hflip=0.5, rotation=10.0)
    side = theta[:, 0, :2].norm(dim=1)  # |column 0| = crop side
    assert side.min() >= math.sqrt(0.5) - 1e-5 and side.max() <= math.sqrt(0.9) + 1e-5
    assert (theta[:, :, 2].abs() <= (1 - side).unsqueeze(1) + 1e-6).all()  # the crop fits
    flipped = theta[:, 0, 0] * theta[:, 1, 1] - theta[:, 0, 1] * theta[:, 1, 0] < 0
    assert 0.45 < flipped.float().mean() < 0.55
    angle = torch.atan2(-theta[:, 0, 1], theta[:, 1, 1])  # rotation from the unflipped column
    assert angle.abs().max() <= math.radians(10) + 1e-5
    assert angle.abs().max() > math.radians(9)


def test_collate_returns_model_range_batches_that_repeat_under_a_seed() -> None:
    samples = [
        (torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8), torch.tensor(i)) for i in range(5)
    ]
    collate = TrainCollate(16, (0.8, 1.0), 0.5, 10.0, (0.1, 0.1, 0.1, 0.02))
    torch.manual_seed(3)
    images, labels = collate(samples)
    assert images.shape == (5, 3, 16, 16) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1 and labels.tolist() == list(range(5))
    torch.manual_seed(3)
    assert torch.equal(collate(samples)[0], images)
    assert not torch.equal(collate(samples)[0], images)
