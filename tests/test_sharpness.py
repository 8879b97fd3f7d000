"""The sharpness ratio on controlled inputs: blur lowers it, noise raises it, halves sit at 1."""

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from facediff.evaluation.sharpness import (
    high_frequency_power,
    sharpness_metrics,
    sharpness_ratio,
)

CLASSES = ["glasses", "hat", "beard"]


@pytest.fixture(scope="module")
def faces(demo_faces) -> tuple[torch.Tensor, torch.Tensor]:
    """24 demo faces per class at 32x32, in [0, 1], with their labels."""
    return demo_faces(32, 24)


def test_a_flat_image_has_no_high_frequency_power() -> None:
    flat = torch.full((2, 3, 16, 16), 0.3)
    assert high_frequency_power(flat).tolist() == pytest.approx([0.0, 0.0], abs=1e-12)


def test_a_checkerboard_has_power_only_at_high_frequencies() -> None:
    board = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2  # Nyquist in both axes
    image = board.float().expand(1, 3, 16, 16)
    assert high_frequency_power(image, cutoff=0.5) > 0
    wave = torch.cos(torch.arange(16) * 2 * torch.pi / 16)  # one cycle: 1/8 of Nyquist
    stripes = (0.5 + 0.5 * wave).expand(1, 3, 16, 16)
    assert high_frequency_power(stripes, cutoff=0.5) < 1e-3 * high_frequency_power(image)


def test_blur_lowers_and_noise_raises_the_ratio(faces) -> None:
    images, _ = faces
    real = high_frequency_power(images)
    blurred = high_frequency_power(TF.gaussian_blur(images, kernel_size=5, sigma=1.0))
    noisy = high_frequency_power((images + 0.1 * torch.randn_like(images)).clamp(0, 1))
    assert sharpness_ratio(real, real) == pytest.approx(1.0)
    assert sharpness_ratio(blurred, real) < 0.5
    assert sharpness_ratio(noisy, real) > 1.5


def test_two_halves_of_real_faces_sit_near_one(faces) -> None:
    images, _ = faces
    power = high_frequency_power(images)
    assert 0.7 < sharpness_ratio(power[::2], power[1::2]) < 1.4


def test_metrics_per_class_and_floor(faces) -> None:
    images, labels = faces
    power = high_frequency_power(images)
    half = torch.arange(len(labels)) % 2 == 0
    fake = power[half].clone()
    fake[labels[half] == 1] *= 0.5  # the hats lose half their fine detail
    out = sharpness_metrics(
        fake, labels[half], power[~half], labels[~half], CLASSES,
        floor_power=power[half], floor_labels=labels[half],
    )  # fmt: skip
    per = out["per_class"]
    assert per["hat"]["sharpness"] == pytest.approx(0.5 * per["hat"]["sharpness_floor"])
    assert per["glasses"]["sharpness"] == pytest.approx(per["glasses"]["sharpness_floor"])
    assert 0 < out["sharpness"] < out["sharpness_floor"]


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="N, 3, H, W"):
        high_frequency_power(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="cutoff"):
        high_frequency_power(torch.zeros(1, 3, 8, 8), cutoff=1.5)
    with pytest.raises(ValueError, match="together"):
        sharpness_metrics(torch.ones(2), torch.zeros(2), torch.ones(2), torch.zeros(2), ["a"],
                          floor_power=torch.ones(2))  # fmt: skip
    assert sharpness_ratio(torch.ones(0), torch.ones(3)) is None
