"""Denoising networks (plain PyTorch; their configs live in conf/model/)."""

from facediff.models.unet import UNet

__all__ = ["UNet"]
