"""Batched colour jitter: torchvision's adjustments for equal factors, fresh factors per image."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as F

from facediff.data.color_jitter import BatchColorJitter, adjust_colors


@pytest.fixture
def images() -> torch.Tensor:
    """(4, 3, 12, 12) in [0, 1], skin-like tones with some texture."""
    generator = torch.Generator().manual_seed(0)
    base = torch.tensor([0.75, 0.55, 0.45]).view(1, 3, 1, 1)
    noise = torch.randn(4, 3, 12, 12, generator=generator)
    return (base + 0.15 * noise).clamp(0, 1)


def _factors(n: int, **changed: float) -> dict[str, torch.Tensor]:
    values = {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0} | changed
    return {name: torch.full((n,), value) for name, value in values.items()}


@pytest.mark.parametrize(
    ("name", "value", "reference"),
    [
        ("brightness", 1.3, F.adjust_brightness),
        ("brightness", 0.7, F.adjust_brightness),
        ("contrast", 0.6, F.adjust_contrast),
        ("contrast", 1.4, F.adjust_contrast),
        ("saturation", 0.5, F.adjust_saturation),
        ("saturation", 1.5, F.adjust_saturation),
    ],
)
def test_matches_torchvision_for_equal_factors(
    images: torch.Tensor, name: str, value: float, reference
) -> None:
    ours = adjust_colors(images, **_factors(len(images), **{name: value}))
    theirs = torch.stack([reference(image, value) for image in images])
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_identity_factors_change_nothing(images: torch.Tensor) -> None:
    torch.testing.assert_close(adjust_colors(images, **_factors(len(images))), images)


def test_hue_turns_colour_like_torchvision_and_keeps_grey(images: torch.Tensor) -> None:
    shifted = adjust_colors(images, **_factors(len(images), hue=0.05))
    hsv_plus = torch.stack([F.adjust_hue(image, 0.05) for image in images])
    hsv_minus = torch.stack([F.adjust_hue(image, -0.05) for image in images])
    # The same direction round the wheel: nearer HSV's +0.05 than its -0.05.
    assert (shifted - hsv_plus).abs().mean() < 0.6 * (shifted - hsv_minus).abs().mean()
    inside = images.clamp(0.2, 0.8)  # no clamping of the result: the channel mean is kept
    turned = adjust_colors(inside, **_factors(len(images), hue=0.05))
    torch.testing.assert_close(turned.mean(dim=1), inside.mean(dim=1), atol=1e-5, rtol=0)
    grey = torch.full((1, 3, 4, 4), 0.4)
    torch.testing.assert_close(adjust_colors(grey, **_factors(1, hue=0.3)), grey)
    full_turn = adjust_colors(images, **_factors(len(images), hue=1.0))
    torch.testing.assert_close(full_turn, images, atol=1e-5, rtol=0)


def test_each_image_gets_its_own_factors_within_range() -> None:
    torch.manual_seed(0)
    same = torch.full((64, 3, 8, 8), 0.5)  # mid grey
    out = BatchColorJitter(brightness=0.2, contrast=0, saturation=0, hue=0)(same)
    means = out.mean(dim=(1, 2, 3))  # brightness factor x 0.5
    assert means.unique().numel() == 64
    assert means.min() >= 0.5 * 0.8 - 1e-6 and means.max() <= 0.5 * 1.2 + 1e-6
    assert out.min() >= 0 and out.max() <= 1
