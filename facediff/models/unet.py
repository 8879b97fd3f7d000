"""Class-conditional ADM-style UNet for DDPM noise prediction.

Blocks are named by resolution and stored in execution order (as NVlabs/edm's DhariwalUNet), e.g.
for ``channel_mult = [1, 2, 2, 4]``, ``num_res_blocks = 2`` and 64x64 inputs:

    input_conv
    enc   64x64_block0, 64x64_block1, 32x32_down, 32x32_block0, ..., 8x8_block1
    mid   8x8_in0 (ResBlock + attention if 8 px is attended), 8x8_in1
    dec   8x8_block0 .. 8x8_block2, 16x16_up, 16x16_block0 .. 16x16_block2, ..., 64x64_block2
    out   GroupNorm -> SiLU -> conv3x3 (zero-initialised: the untrained net outputs 0)

Every encoder module's output is pushed onto the skip stack; every decoder block pops one and
concatenates it, its input width read off the encoder module (``out_channels``). A block is a
ResBlock followed, at attended resolutions, by self-attention (``<block>.attn``); see
``UNet.attention_layers()``.

Conditioning: emb = MLP(sinusoidal(t)) + class_emb(y), fed to every ResBlock. ``class_emb`` has
``num_classes + 1`` rows; the last one is the learned "null" class for classifier-free guidance.

``UNetConfig`` is the single source of truth for the hyper-parameters: it is validated once,
stored in every checkpoint (``UNetConfig.to_dict()``) and rebuilds the network for sampling.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from facediff.models.layers import (
    AttentionBlock,
    Downsample,
    ResBlock,
    TimestepEmbedding,
    Upsample,
    capturing_attention,
    embed_classes,
    group_norm,
    zero_module,
)


@dataclass(frozen=True)
class UNetConfig:
    """The UNet's hyper-parameters.

    image_size: side of the (square) inputs; a multiple of 2**(len(channel_mult)-1).
    num_classes: number of real classes; class id ``num_classes`` is the null class.
    channel_mult: width multiplier of ``base_channels`` per resolution level.
    attn_resolutions: pixel resolutions with self-attention (encoder, decoder, and the middle
        block if the lowest resolution is listed); stored sorted, largest first.
    emb_channels: width of the time/class embedding; ``None`` means ``4 * base_channels``
        (stored resolved).
    groups: GroupNorm groups (capped at the width); must divide every feature width.
    grad_checkpoint: recompute each ResBlock / attention block in backward while training.
    """

    image_size: int
    num_classes: int
    # The knobs: no defaults here, conf/model/*.yaml sets every one (the one place for them).
    base_channels: int
    channel_mult: list[int]
    num_res_blocks: int
    attn_resolutions: list[int]
    attn_heads: int
    dropout: float
    grad_checkpoint: bool
    groups: int
    # Not knobs: RGB in and out; the embedding width derived from base_channels.
    in_channels: int = 3
    out_channels: int = 3
    emb_channels: int | None = None

    def __post_init__(self) -> None:
        # Normalise (Hydra hands over ListConfig objects) while frozen: plain ints and lists.
        set_ = object.__setattr__
        set_(self, "channel_mult", [int(m) for m in self.channel_mult])
        set_(
            self, "attn_resolutions", sorted({int(r) for r in self.attn_resolutions}, reverse=True)
        )
        if self.emb_channels is None:
            set_(self, "emb_channels", 4 * int(self.base_channels))
        self._validate()

    def _validate(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError(
                f"channel_mult must be a non-empty list of ints >= 1: {self.channel_mult}"
            )
        if self.base_channels < 1 or self.emb_channels < 1 or self.num_res_blocks < 1:
            raise ValueError(
                "base_channels, emb_channels and num_res_blocks must be >= 1, got "
                f"{self.base_channels}, {self.emb_channels}, {self.num_res_blocks}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        factor = 2 ** (len(self.channel_mult) - 1)
        if self.image_size < 1 or self.image_size % factor != 0:
            examples = ", ".join(str(factor * k) for k in range(1, 9))
            raise ValueError(
                f"image_size={self.image_size} is not divisible by {factor} = "
                f"2**(len(channel_mult)-1) for channel_mult={self.channel_mult}; sizes that "
                f"work: {examples}, ... (or change channel_mult)"
            )
        missing = [r for r in self.attn_resolutions if r not in self.resolutions]
        if missing:
            raise ValueError(
                f"attn_resolutions {missing} do not occur in this network; with image_size="
                f"{self.image_size} and channel_mult={self.channel_mult} the resolutions are "
                f"{self.resolutions}"
            )

    @property
    def resolutions(self) -> list[int]:
        """The pixel resolution of each level, from the input down."""
        return [self.image_size >> i for i in range(len(self.channel_mult))]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class UNetBlock(nn.Module):
    """A ResBlock, followed by self-attention at attended resolutions."""

    def __init__(self, c_in: int, c_out: int, resolution: int, attention: bool, cfg: UNetConfig):
        super().__init__()
        self.resolution = resolution
        self.out_channels = c_out
        self.res = ResBlock(c_in, c_out, cfg.emb_channels, cfg.dropout, cfg.groups)
        self.attn = AttentionBlock(c_out, cfg.attn_heads, cfg.groups) if attention else None


class UNet(nn.Module):
    """Conditional UNet predicting a tensor shaped like ``x`` from ``(x, t, y)``.

    ``UNet(config)`` or ``UNet(**fields of UNetConfig)``.
    """

    config_class = UNetConfig  # the registry reads the hyper-parameter names off it

    def __init__(self, config: UNetConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = UNetConfig(**kwargs)
        elif kwargs:
            raise TypeError("Pass either a UNetConfig or its fields as keywords, not both.")
        self.config = cfg = config
        self.image_size = cfg.image_size
        self.num_classes = cfg.num_classes
        self.in_channels = cfg.in_channels
        self.grad_checkpoint = cfg.grad_checkpoint

        self.time_emb = TimestepEmbedding(cfg.base_channels, cfg.emb_channels)
        self.class_emb = nn.Embedding(cfg.num_classes + 1, cfg.emb_channels)  # last: null class
        self.input_conv = nn.Conv2d(cfg.in_channels, cfg.base_channels, 3, padding=1)

        self.enc = nn.ModuleDict()
        ch = cfg.base_channels
        for level, (mult, r) in enumerate(zip(cfg.channel_mult, cfg.resolutions, strict=True)):
            if level > 0:
                self.enc[f"{r}x{r}_down"] = Downsample(ch)
            for i in range(cfg.num_res_blocks):
                attn = r in cfg.attn_resolutions
                self.enc[f"{r}x{r}_block{i}"] = UNetBlock(
                    ch, cfg.base_channels * mult, r, attn, cfg
                )
                ch = cfg.base_channels * mult

        r = cfg.resolutions[-1]
        self.mid = nn.ModuleDict()
        self.mid[f"{r}x{r}_in0"] = UNetBlock(ch, ch, r, r in cfg.attn_resolutions, cfg)
        self.mid[f"{r}x{r}_in1"] = UNetBlock(ch, ch, r, False, cfg)

        # Skip widths, read off the modules that push them (the input conv, then the encoder).
        skips = [self.input_conv.out_channels] + [m.out_channels for m in self.enc.values()]
        self.dec = nn.ModuleDict()
        levels = list(zip(cfg.channel_mult, cfg.resolutions, strict=True))
        for level, (mult, r) in reversed(list(enumerate(levels))):
            if level < len(levels) - 1:
                self.dec[f"{r}x{r}_up"] = Upsample(ch)
            for i in range(cfg.num_res_blocks + 1):
                attn = r in cfg.attn_resolutions
                c_in = ch + skips.pop()
                self.dec[f"{r}x{r}_block{i}"] = UNetBlock(
                    c_in, cfg.base_channels * mult, r, attn, cfg
                )
                ch = cfg.base_channels * mult
        assert not skips, "every encoder output must be consumed by one decoder block"

        self.out = nn.Sequential(
            group_norm(ch, cfg.groups),
            nn.SiLU(),
            zero_module(nn.Conv2d(ch, cfg.out_channels, 3, padding=1)),
        )

        # Modules are registered in execution order, so this dict is in execution order too.
        self._attn_blocks: dict[str, AttentionBlock] = {}
        self._attn_resolution: dict[str, int] = {}
        for name, module in self.named_modules():
            if isinstance(module, UNetBlock) and module.attn is not None:
                module.attn.name = f"{name}.attn"
                self._attn_blocks[module.attn.name] = module.attn
                self._attn_resolution[module.attn.name] = module.resolution

    # ------------------------------------------------------------------------------ helpers

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def attention_layers(self) -> dict[str, int]:
        """{attention block name: pixel resolution (side length)}, in execution order."""
        return dict(self._attn_resolution)

    @contextmanager
    def capture_attention(self) -> Iterator[dict[str, Tensor]]:
        """Record attention weights of every forward run inside the block.

        ``with net.capture_attention() as maps: net(x, t, y)`` leaves ``maps[name]`` holding the
        (detached, float32) weights (B, heads, HW, HW) of each attention block of the *last*
        forward. The weights are computed explicitly only inside the block, which costs
        O((HW)^2) memory per block; outside it the fused SDPA path runs.
        """
        with capturing_attention(self._attn_blocks.values()) as maps:
            yield maps

    def class_embedding(self, y: Tensor) -> Tensor:
        """Embed class ids (B,) in 0..num_classes (num_classes = null) or class weights
        (B, num_classes) or (B, num_classes + 1) (last column: null), whose embedding is the
        weighted sum of the class rows (class blends)."""
        return embed_classes(self.class_emb, self.num_classes, y)

    def _run(self, block: nn.Module, *args: Tensor) -> Tensor:
        if self.grad_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def _check_inputs(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        B = x.shape[0]
        s = self.image_size
        if x.dim() != 4 or x.shape[1:] != (self.in_channels, s, s):
            raise ValueError(
                f"x must have shape (B, {self.in_channels}, {s}, {s}), got {tuple(x.shape)}"
            )
        if t.dim() == 0:
            t = t.expand(B)
        if t.shape != (B,):
            raise ValueError(f"t must have shape ({B},) (or be a scalar), got {tuple(t.shape)}")
        if y.shape[0] != B:
            raise ValueError(f"y has batch size {y.shape[0]} but x has {B}")
        return t

    # ------------------------------------------------------------------------------ forward

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """x: (B, C_in, H, W); t: (B,) int or float timesteps; y: (B,) ids or (B, K) weights."""
        t = self._check_inputs(x, t, y)
        emb = self.time_emb(t) + self.class_embedding(y)  # (B, E)

        h = self.input_conv(x)  # (B, base, H, W)
        skips = [h]
        for module in self.enc.values():
            h = self._block(module, h, emb)  # a block, or a stride-2 conv to (B, C, H/2, W/2)
            skips.append(h)
        for block in self.mid.values():
            h = self._block(block, h, emb)
        for module in self.dec.values():
            if isinstance(module, UNetBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._block(module, h, emb)  # a block, or nearest x2 + conv to (B, C, 2H, 2W)
        return self.out(h)  # (B, C_out, H, W)

    def _block(self, module: nn.Module, h: Tensor, emb: Tensor) -> Tensor:
        if not isinstance(module, UNetBlock):
            return module(h)  # Downsample / Upsample
        h = self._run(module.res, h, emb)
        return h if module.attn is None else self._run(module.attn, h)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.to_dict().items())
