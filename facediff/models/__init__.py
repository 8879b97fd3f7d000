"""Denoising networks (plain PyTorch; their configs live in conf/model/, the registry of
known networks in facediff.models.registry)."""

from facediff.models.unet import UNet, UNetConfig

__all__ = ["UNet", "UNetConfig"]
