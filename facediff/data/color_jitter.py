"""Colour jitter on a whole batch, with fresh factors for every image.

torchvision's ``ColorJitter`` works on one image per call; its hue term alone (an HSV round trip
per image) was a third of the augmentation's time per image (BENCHMARKS.md, run 5). Here the
four adjustments are a handful of tensor operations over the whole batch, run inside the
DataLoader's collate (facediff.data.batch_augment: in the workers, with their seeded RNG):

    brightness  x <- b x
    contrast    x <- c x + (1 - c) mean(gray(x))        (mean over the image)
    saturation  x <- s x + (1 - s) gray(x)              (per pixel)
    hue         x <- R(2 pi h) x                        (rotation about the grey axis)

each followed by a clamp to [0, 1], as torchvision clamps. ``gray`` uses ITU-R 601 weights, as
torchvision does; brightness, contrast and saturation match ``torchvision.transforms.v2.functional``
for equal factors. The hue shift rotates each pixel about the grey axis (1, 1, 1) / sqrt(3), one
3x3 matrix per image, instead of an HSV round trip: both turn the colour the same way round the
colour wheel (red towards yellow and green for a positive shift) by a similar amount, but the
rotation keeps a pixel's channel mean where HSV keeps its largest and smallest channel. The order
is fixed (brightness, contrast, saturation, hue), where torchvision draws one per image.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, torchvision's rgb_to_grayscale


def gray(x: Tensor) -> Tensor:
    """(B, 3, H, W) RGB -> (B, 1, H, W) luma."""
    w = x.new_tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def hue_rotation(angle: Tensor) -> Tensor:
    """(B,) angles in radians -> (B, 3, 3) rotations about the grey axis (Rodrigues' formula)."""
    u = angle.new_full((3,), 1.0 / math.sqrt(3.0))
    cross = angle.new_tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) * u[0]
    cos, sin = angle.cos().view(-1, 1, 1), angle.sin().view(-1, 1, 1)
    eye = torch.eye(3, dtype=angle.dtype, device=angle.device)
    return cos * eye + sin * cross + (1 - cos) * torch.outer(u, u)


def adjust_colors(
    x: Tensor, brightness: Tensor, contrast: Tensor, saturation: Tensor, hue: Tensor
) -> Tensor:
    """Apply per-image factors to x: (B, 3, H, W) in [0, 1]; factors (B,), hue in turns."""

    def per_image(f: Tensor) -> Tensor:
        return f.to(x.dtype).view(-1, 1, 1, 1)

    x = (x * per_image(brightness)).clamp(0, 1)
    c = per_image(contrast)
    x = (c * x + (1 - c) * gray(x).mean(dim=(2, 3), keepdim=True)).clamp(0, 1)
    s = per_image(saturation)
    x = (s * x + (1 - s) * gray(x)).clamp(0, 1)
    rotation = hue_rotation(hue.to(x.dtype) * (2 * math.pi))  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", rotation, x).clamp(0, 1)


class BatchColorJitter:
    """Random brightness, contrast, saturation and hue for each image of a batch.

    Factors are drawn as torchvision draws them: brightness, contrast and saturation uniform in
    [max(0, 1 - v), 1 + v], hue uniform in [-v, v] turns. Images are (B, 3, H, W) in [0, 1]
    and come back in it.
    """

    def __init__(self, brightness: float, contrast: float, saturation: float, hue: float) -> None:
        self.brightness, self.contrast, self.saturation, self.hue = (
            float(brightness),
            float(contrast),
            float(saturation),
            float(hue),
        )

    @staticmethod
    def _factor(n: int, spread: float, device: torch.device) -> Tensor:
        lo = max(0.0, 1.0 - spread)
        return torch.rand(n, device=device) * (1.0 + spread - lo) + lo

    def __call__(self, images: Tensor) -> Tensor:
        n, device = images.shape[0], images.device
        hue = (torch.rand(n, device=device) * 2 - 1) * self.hue
        return adjust_colors(
            images,
            self._factor(n, self.brightness, device),
            self._factor(n, self.contrast, device),
            self._factor(n, self.saturation, device),
            hue,
        )

    def __repr__(self) -> str:
        return (
            f"BatchColorJitter(brightness={self.brightness}, contrast={self.contrast}, "
            f"saturation={self.saturation}, hue={self.hue})"
        )
