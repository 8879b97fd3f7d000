"""The networks the benchmark compares: facediff's model configs (conf/model/*.yaml, composed as
train.py composes them), the networks of the recipes (conf/experiment/*.yaml: `utkface_cpu`,
`demo`) and diffusers' UNet2DModel laid out like `unet_attn` (read from its config).

diffusers is optional (the `bench` extra in pyproject.toml); without it the peer is skipped with
a note. Every network is wrapped to facediff's interface `net(x, t, y)`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

CONF = Path(__file__).parents[1] / "conf"
FACEDIFF_MODELS = ("original", "unet_attn", "unet", "unet_tiny")
RECIPE_MODELS = ("utkface_cpu", "demo")  # an experiment's network, as `experiment=<name>` sets it
PEER = "diffusers_unet2d"
ALL_MODELS = (*FACEDIFF_MODELS, *RECIPE_MODELS, PEER)
# the largest size a config is laid out for, where it has one
NATIVE_SIZE = {"unet_tiny": 32, "utkface_cpu": 32, "demo": 32}


def have_diffusers() -> bool:
    return importlib.util.find_spec("diffusers") is not None


def model_size(name: str, size: int) -> int:
    """The image size a model is benchmarked at: `size`, capped at the config's native size."""
    return min(size, NATIVE_SIZE.get(name, size))


class DiffusersUNet(nn.Module):
    """diffusers' UNet2DModel laid out like a facediff UNet config (`unet_attn`'s in the
    benchmark): its widths, ResNet blocks per level, GroupNorm groups and dropout (on a CPU the
    random masks cost ~5% of a step), self-attention at the same pixel resolutions (and in the
    middle block where the lowest resolution has it), a class embedding with one extra row (the
    null class) and 32-channel attention heads."""

    def __init__(self, image_size: int, num_classes: int, cfg: dict[str, Any]) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        self.image_size, self.num_classes = image_size, num_classes
        widths = tuple(cfg["base_channels"] * m for m in cfg["channel_mult"])
        attn = [image_size // 2**level in cfg["attn_resolutions"] for level in range(len(widths))]
        self.net = UNet2DModel(
            sample_size=image_size,
            in_channels=3,
            out_channels=3,
            block_out_channels=widths,
            layers_per_block=cfg["num_res_blocks"],
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in attn[::-1]),
            add_attention=attn[-1],
            attention_head_dim=32,
            num_class_embeds=num_classes + 1,
            norm_num_groups=cfg["groups"],
            dropout=cfg["dropout"],
        )

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return self.net(x, t, class_labels=y).sample

    def set_grad_checkpoint(self, on: bool) -> None:
        if on:
            self.net.enable_gradient_checkpointing()
        else:
            self.net.disable_gradient_checkpointing()


def facediff_model_config(name: str) -> dict[str, Any]:
    """conf/model/<name>.yaml, or the network of conf/experiment/<name>.yaml for a recipe,
    composed through Hydra as train.py composes it, as a plain dict."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    override = f"experiment={name}" if name in RECIPE_MODELS else f"model={name}"
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[override])
    return OmegaConf.to_container(cfg.model, resolve=True)  # type: ignore[return-value]


def build_model(name: str, image_size: int, num_classes: int = 3) -> nn.Module:
    """A fresh network in training mode (seeded, so every case of a model starts alike)."""
    torch.manual_seed(0)
    if name == PEER:
        if not have_diffusers():
            raise ModuleNotFoundError("diffusers is not installed (pip install -e .[bench])")
        matched = facediff_model_config("unet_attn")  # the layout it is matched to
        return DiffusersUNet(image_size, num_classes, matched).train()
    if name not in (*FACEDIFF_MODELS, *RECIPE_MODELS):
        raise ValueError(f"unknown model {name!r}; choose from {ALL_MODELS}")
    from facediff.models.registry import build_model as build_registered

    cfg = facediff_model_config(name)
    return build_registered(cfg, image_size, num_classes).train()


def set_grad_checkpoint(net: nn.Module, on: bool) -> None:
    """Turn activation checkpointing on or off for any of the benchmarked networks."""
    if isinstance(net, DiffusersUNet):
        net.set_grad_checkpoint(on)
    elif hasattr(net, "grad_checkpoint"):
        net.grad_checkpoint = on
    else:
        raise ValueError(f"{type(net).__name__} has no gradient checkpointing switch")


def num_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
