"""Training augmentation on whole batches, with fresh parameters for every image.

torchvision's transforms draw one set of parameters per call, so they augment one image at a
time: at 64x64 that cost 1.4 ms per image, most of it per-call overhead, and held the loader
below 2,000 images/s on two workers (BENCHMARKS.md, runs 5 and 7). Here the training loader's
workers return the cached uint8 images untouched and the collate augments the batch:

1. geometry, as one affine map per image resampled once (``F.affine_grid`` + ``F.grid_sample``,
   bilinear, reflected at the borders): a random square crop of a random share of the area
   (``RandomResizedCrop`` with ratio 1), a horizontal flip, a rotation about the crop's centre;
2. colour jitter (facediff.data.color_jitter);
3. scaling to the model's range [-1, 1].

Before that, the batch is shrunk (antialiased, as torchvision's ``Resize``) to the size at which
the smallest crop fills the output, so the resampling never shrinks by more than 1/sqrt(crop
scale's low end) (1.12x for 0.8) and never aliases; without crops that size is the image size,
so flips alone give exactly the evaluation transform's pixels, flipped. Reflection fills the
corners a rotation uncovers, as the reflect-padded rotation it replaces did. Draws come from
torch's global RNG: seeded per worker and epoch by the loader, so runs and resumes repeat.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import default_collate

from facediff.data.color_jitter import BatchColorJitter


def affine_params(
    n: int,
    crop_scale: tuple[float, float] | None,
    hflip: float,
    rotation: float,
    device: torch.device | None = None,
) -> Tensor:
    """(n, 2, 3) affine maps from output to input coordinates (both in [-1, 1], x right, y down).

    Side of the crop: sqrt(area share), the share uniform in ``crop_scale``; its centre uniform
    where the unrotated crop fits; flipped with probability ``hflip``; rotated by an angle
    uniform in [-rotation, rotation] degrees.
    """
    if crop_scale is None:
        side = torch.ones(n, device=device)
    else:
        lo, hi = crop_scale
        side = (torch.rand(n, device=device) * (hi - lo) + lo).sqrt()
    centre = (torch.rand(n, 2, device=device) * 2 - 1) * (1 - side).unsqueeze(1)  # (n, 2)
    flip = torch.where(torch.rand(n, device=device) < hflip, -1.0, 1.0)
    angle = (torch.rand(n, device=device) * 2 - 1) * math.radians(rotation)
    cos, sin = angle.cos() * side, angle.sin() * side
    return torch.stack(
        [
            torch.stack([cos * flip, -sin, centre[:, 0]], dim=1),
            torch.stack([sin * flip, cos, centre[:, 1]], dim=1),
        ],
        dim=1,
    )


def resample(images: Tensor, theta: Tensor, size: int) -> Tensor:
    """(B, C, L, L) float, (B, 2, 3) maps -> (B, C, size, size), bilinear, reflected borders."""
    grid = F.affine_grid(theta, [images.shape[0], images.shape[1], size, size], align_corners=False)
    return F.grid_sample(
        images, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )


class TrainCollate:
    """The training loader's collate: uint8 (3, L, L) samples in, augmented float32
    (B, 3, S, S) in [-1, 1] and int64 (B,) labels out. Picklable for worker processes."""

    def __init__(
        self,
        image_size: int,
        crop_scale: tuple[float, float] | None,
        hflip: float,
        rotation: float,
        color_jitter: tuple[float, float, float, float] | None,
    ) -> None:
        self.image_size = image_size
        self.crop_scale, self.hflip, self.rotation = crop_scale, hflip, rotation
        # Shrink to where the smallest crop fills the output; the resampling only enlarges or
        # shrinks slightly from there.
        smallest = 1.0 if crop_scale is None else math.sqrt(crop_scale[0])
        self.work_size = math.ceil(image_size / smallest - 1e-6)
        self.jitter = None if color_jitter is None else BatchColorJitter(*color_jitter)

    def augment(self, images: Tensor) -> Tensor:
        """uint8 (B, 3, L, L) -> float32 (B, 3, S, S) in [-1, 1]."""
        x = images.float().div(255)
        if x.shape[-1] > self.work_size:
            x = F.interpolate(x, size=self.work_size, mode="bilinear", antialias=True)
        theta = affine_params(len(x), self.crop_scale, self.hflip, self.rotation, x.device)
        x = resample(x, theta, self.image_size).clamp(0, 1)
        if self.jitter is not None:
            x = self.jitter(x)
        return x.mul(2).sub(1)

    def __call__(self, samples: Sequence[Any]) -> tuple[Tensor, Tensor]:
        images, labels = default_collate(samples)
        return self.augment(images), labels
