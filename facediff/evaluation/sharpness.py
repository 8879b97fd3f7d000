"""Sharpness in pixel space: do the samples hold as much fine detail as real faces?

FID and KID in the evaluation classifier's feature space see what tells the groups apart far
better than blur (docs/recipes.md), so a blurred sample can sit at the FID floor. This metric
looks at the pixels. For one image x (3, H, W) in [0, 1], with luminance Y = 0.299 R + 0.587 G +
0.114 B and its mean removed, the high-frequency power is

    P_hf(x) = mean of |FFT2(Y - mean Y)(f)|^2 over the frequencies with |f| >= cutoff * Nyquist,

and a group's sharpness ratio is mean P_hf(samples) / mean P_hf(real test faces):
1 = as much fine detail as real faces, below 1 = blurred, above 1 = noise or artefacts that
real faces lack. The floor is the same ratio between two disjoint sets of real faces (the
validation and the test split): how far from 1 a perfect generator lands with this many images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601


def high_frequency_power(images: Tensor, cutoff: float = 0.5) -> Tensor:
    """P_hf of each image: (N, 3, H, W) in [0, 1] -> (N,) float64."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"Expected images (N, 3, H, W), got shape {tuple(images.shape)}.")
    if not 0.0 < cutoff < 1.0:
        raise ValueError(f"cutoff must be in (0, 1) (a fraction of Nyquist), got {cutoff}.")
    weights = torch.tensor(LUMA, dtype=torch.float64, device=images.device)
    y = torch.einsum("nchw,c->nhw", images.double(), weights)  # (N, H, W)
    y = y - y.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(y).abs().square()  # (N, H, W)
    h, w = y.shape[-2:]
    fy = torch.fft.fftfreq(h, device=y.device).abs()[:, None] * 2  # 1 = Nyquist
    fx = torch.fft.fftfreq(w, device=y.device).abs()[None, :] * 2
    high = (fy.square() + fx.square()).sqrt() >= cutoff  # (H, W)
    return power[:, high].mean(dim=1)


def sharpness_ratio(fake_power: Tensor, real_power: Tensor) -> float | None:
    """mean P_hf of the samples over that of the real faces; None when either set is empty."""
    if len(fake_power) == 0 or len(real_power) == 0 or float(real_power.mean()) <= 0:
        return None
    return float(fake_power.mean() / real_power.mean())


def sharpness_metrics(
    fake_power: Tensor,
    fake_labels: Tensor,
    real_power: Tensor,
    real_labels: Tensor,
    class_names: Sequence[str],
    floor_power: Tensor | None = None,
    floor_labels: Tensor | None = None,
) -> dict[str, Any]:
    """`sharpness` overall and per class (samples against the real test faces) and, given real
    held-out faces' powers and labels, `sharpness_floor` (those faces against the test faces).
    Returns {..., "per_class": {name: ...}} to merge into metrics.group_metrics' result."""
    if (floor_power is None) != (floor_labels is None):
        raise ValueError("Give floor_power and floor_labels together, or neither.")

    def row(c: int | None) -> dict[str, float | None]:
        fake = fake_power if c is None else fake_power[fake_labels == c]
        real = real_power if c is None else real_power[real_labels == c]
        values = {"sharpness": sharpness_ratio(fake, real)}
        if floor_power is not None and floor_labels is not None:
            held_out = floor_power if c is None else floor_power[floor_labels == c]
            values["sharpness_floor"] = sharpness_ratio(held_out, real)
        return values

    return {**row(None), "per_class": {name: row(c) for c, name in enumerate(class_names)}}
