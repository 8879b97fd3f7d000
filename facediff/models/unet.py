"""Class-conditional ADM-style UNet for DDPM noise prediction.

Layout for ``channel_mult = [1, 2, 2, 4]`` and 64x64 inputs (resolutions 64, 32, 16, 8):

    input conv
    down.0 .. down.3   num_res_blocks ResBlocks (+ attention) each, stride-2 conv between levels
    mid                ResBlock, attention (only if the lowest resolution is attended), ResBlock
    up.3 .. up.0       num_res_blocks + 1 ResBlocks (+ attention) each, every block consuming one
                       encoder skip; nearest x2 + conv between levels
    out                GroupNorm -> SiLU -> conv3x3 (zero-initialised: the untrained net outputs 0)

``down.i`` and ``up.i`` work at the same resolution ``image_size // 2**i``. Attention blocks are
named by their module path ("down.1.attn.0", "mid.attn", "up.2.attn.1", ...); see
``UNet.attention_layers()``.

Conditioning: emb = MLP(sinusoidal(t)) + class_emb(y), fed to every ResBlock. ``class_emb`` has
``num_classes + 1`` rows; the last one is the learned "null" class for classifier-free guidance.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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
    group_norm,
    zero_module,
)


class _Level(nn.Module):
    """One resolution level: residual blocks, optional attention after each, optional resampler."""

    def __init__(self) -> None:
        super().__init__()
        self.res = nn.ModuleList()
        self.attn = nn.ModuleList()  # empty, or one AttentionBlock per ResBlock
        self.resample: nn.Module | None = None


class UNet(nn.Module):
    """Conditional UNet predicting a tensor shaped like ``x`` from ``(x, t, y)``.

    Args:
        image_size: side of the (square) inputs; must be a multiple of 2**(len(channel_mult)-1).
        num_classes: number of real classes; class id ``num_classes`` is the null class.
        channel_mult: width multiplier of ``base_channels`` per resolution level.
        attn_resolutions: pixel resolutions at which self-attention is used (encoder, decoder,
            and the middle block if the lowest resolution is listed).
        emb_channels: width of the time/class embedding; ``None`` means ``4 * base_channels``.
        groups: GroupNorm groups (capped at the width); must divide every feature width.
        grad_checkpoint: recompute each ResBlock / attention block in backward while training.
    """

    def __init__(
        self,
        image_size: int,
        num_classes: int,
        in_channels: int = 3,
        out_channels: int = 3,
        base_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2, 4),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16, 8),
        attn_heads: int = 4,
        dropout: float = 0.1,
        grad_checkpoint: bool = False,
        emb_channels: int | None = None,
        groups: int = 32,
    ) -> None:
        super().__init__()
        # Hydra hands over ListConfig objects: normalise to plain Python types first.
        channel_mult = [int(m) for m in channel_mult]
        attn_resolutions = sorted({int(r) for r in attn_resolutions}, reverse=True)
        emb_channels = 4 * base_channels if emb_channels is None else int(emb_channels)
        self._validate(
            image_size,
            num_classes,
            base_channels,
            channel_mult,
            num_res_blocks,
            attn_resolutions,
            dropout,
            emb_channels,
        )
        self.config: dict[str, Any] = dict(
            image_size=image_size,
            num_classes=num_classes,
            in_channels=in_channels,
            out_channels=out_channels,
            base_channels=base_channels,
            channel_mult=channel_mult,
            num_res_blocks=num_res_blocks,
            attn_resolutions=attn_resolutions,
            attn_heads=attn_heads,
            dropout=dropout,
            grad_checkpoint=grad_checkpoint,
            emb_channels=emb_channels,
            groups=groups,
        )
        self.image_size = image_size
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.grad_checkpoint = grad_checkpoint

        def res(c_in: int, c_out: int) -> ResBlock:
            return ResBlock(c_in, c_out, emb_channels, dropout, groups)

        def attn(c: int) -> AttentionBlock:
            return AttentionBlock(c, attn_heads, groups)

        self.time_emb = TimestepEmbedding(base_channels, emb_channels)
        self.class_emb = nn.Embedding(num_classes + 1, emb_channels)  # last row: null class
        self.input_conv = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        # Encoder. `skips` records the width of every tensor pushed onto the skip stack.
        ch, skips = base_channels, [base_channels]
        self.down = nn.ModuleList()
        for i, mult in enumerate(channel_mult):
            level, use_attn = _Level(), (image_size >> i) in attn_resolutions
            for _ in range(num_res_blocks):
                level.res.append(res(ch, base_channels * mult))
                ch = base_channels * mult
                if use_attn:
                    level.attn.append(attn(ch))
                skips.append(ch)
            if i < len(channel_mult) - 1:
                level.resample = Downsample(ch)
                skips.append(ch)
            self.down.append(level)

        lowest = image_size >> (len(channel_mult) - 1)
        self.mid = nn.ModuleDict({"res0": res(ch, ch)})
        if lowest in attn_resolutions:
            self.mid["attn"] = attn(ch)
        self.mid["res1"] = res(ch, ch)

        # Decoder, stored in level order (up.i at the resolution of down.i) but run in reverse.
        up_levels: list[_Level] = []
        for i, mult in reversed(list(enumerate(channel_mult))):
            level, use_attn = _Level(), (image_size >> i) in attn_resolutions
            for _ in range(num_res_blocks + 1):
                level.res.append(res(ch + skips.pop(), base_channels * mult))
                ch = base_channels * mult
                if use_attn:
                    level.attn.append(attn(ch))
            if i > 0:
                level.resample = Upsample(ch)
            up_levels.append(level)
        assert not skips, "skip bookkeeping is off"
        self.up = nn.ModuleList(reversed(up_levels))

        self.out = nn.Sequential(
            group_norm(ch, groups),
            nn.SiLU(),
            zero_module(nn.Conv2d(ch, out_channels, 3, padding=1)),
        )

        self._attn_blocks: dict[str, AttentionBlock] = {}
        for name, module in self.named_modules():
            if isinstance(module, AttentionBlock):
                module.name = name
                self._attn_blocks[name] = module
        # Execution order rather than registration order (the decoder is stored reversed).
        names = [f"down.{i}." for i in range(len(channel_mult))] + ["mid."]
        names += [f"up.{i}." for i in reversed(range(len(channel_mult)))]
        self._attn_names = [n for p in names for n in self._attn_blocks if n.startswith(p)]

    @staticmethod
    def _validate(
        image_size: int,
        num_classes: int,
        base_channels: int,
        channel_mult: list[int],
        num_res_blocks: int,
        attn_resolutions: list[int],
        dropout: float,
        emb_channels: int,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not channel_mult or min(channel_mult) < 1:
            raise ValueError(f"channel_mult must be a non-empty list of ints >= 1: {channel_mult}")
        if base_channels < 1 or emb_channels < 1 or num_res_blocks < 1:
            raise ValueError(
                "base_channels, emb_channels and num_res_blocks must be >= 1, got "
                f"{base_channels}, {emb_channels}, {num_res_blocks}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        factor = 2 ** (len(channel_mult) - 1)
        if image_size < 1 or image_size % factor != 0:
            examples = ", ".join(str(factor * k) for k in range(1, 9))
            raise ValueError(
                f"image_size={image_size} is not divisible by {factor} = 2**(len(channel_mult)-1) "
                f"for channel_mult={channel_mult}; sizes that work: {examples}, ... "
                f"(or change channel_mult)"
            )
        available = [image_size >> i for i in range(len(channel_mult))]
        missing = [r for r in attn_resolutions if r not in available]
        if missing:
            raise ValueError(
                f"attn_resolutions {missing} do not occur in this network; with image_size="
                f"{image_size} and channel_mult={channel_mult} the resolutions are {available}"
            )

    # ------------------------------------------------------------------------------ helpers

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def attention_layers(self) -> dict[str, int]:
        """{attention block name: pixel resolution (side length)}, in execution order."""
        out = {}
        for name in self._attn_names:
            part, idx = name.split(".")[:2]
            out[name] = self.image_size >> (len(self.down) - 1 if part == "mid" else int(idx))
        return out

    @contextmanager
    def capture_attention(self) -> Iterator[dict[str, Tensor]]:
        """Record attention weights of every forward run inside the block.

        ``with net.capture_attention() as maps: net(x, t, y)`` leaves ``maps[name]`` holding the
        (detached, float32) weights (B, heads, HW, HW) of each attention block of the *last*
        forward. The weights are computed explicitly only inside the block, which costs
        O((HW)^2) memory per block; outside it the fused SDPA path runs.
        """
        maps: dict[str, Tensor] = {}
        for block in self._attn_blocks.values():
            block.capture = maps
        try:
            yield maps
        finally:
            for block in self._attn_blocks.values():
                block.capture = None

    def class_embedding(self, y: Tensor) -> Tensor:
        """Embed class ids (B,) in 0..num_classes (num_classes = null) or class weights
        (B, num_classes) or (B, num_classes + 1) (last column: null), whose embedding is the
        weighted sum of the class rows (class blends)."""
        n = self.num_classes
        if y.dim() == 1 and not y.is_floating_point() and y.dtype != torch.bool:
            in_range = ((y >= 0) & (y <= n)).all()
            msg = f"class ids must be in 0..{n} ({n} = null/unconditional class)"
            if y.is_cuda:  # no host sync on the GPU: a device-side assert instead
                torch._assert_async(in_range, msg)
            elif not in_range:
                raise ValueError(f"{msg}, got {y[(y < 0) | (y > n)].unique().tolist()}")
            return self.class_emb(y)  # (B, E)
        if y.dim() == 2 and y.is_floating_point() and y.shape[1] in (n, n + 1):
            weight = self.class_emb.weight[: y.shape[1]]  # (n or n+1, E)
            return y.to(weight.dtype) @ weight  # (B, E)
        raise ValueError(
            f"y must be integer class ids of shape (B,) or float class weights of shape "
            f"(B, {n}) or (B, {n + 1}); got dtype {y.dtype} and shape {tuple(y.shape)}"
        )

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
        hs = [h]
        for level in self.down:
            for i, block in enumerate(level.res):
                h = self._run(block, h, emb)
                if len(level.attn):
                    h = self._run(level.attn[i], h)
                hs.append(h)
            if level.resample is not None:
                h = level.resample(h)  # (B, C, H/2, W/2)
                hs.append(h)

        h = self._run(self.mid["res0"], h, emb)
        if "attn" in self.mid:
            h = self._run(self.mid["attn"], h)
        h = self._run(self.mid["res1"], h, emb)

        for level in reversed(self.up):
            for i, block in enumerate(level.res):
                h = self._run(block, torch.cat([h, hs.pop()], dim=1), emb)
                if len(level.attn):
                    h = self._run(level.attn[i], h)
            if level.resample is not None:
                h = level.resample(h)  # (B, C, 2H, 2W)

        return self.out(h)  # (B, C_out, H, W)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items())
