"""The original project's network (its Colab notebook's conditional UNet), re-implemented as a
baseline that trains and samples through facediff's module, samplers and checkpoints.

Faithful to ../shared/NOTES.md ("The original network in detail"), module names included, so a
state_dict of the original loads into it (except ``label_emb``, which has one extra row here: the
null class of classifier-free guidance):

    inc      DoubleConv(3 -> 64)                                     at 64x64
    down1    Down(64 -> 128)   + sa1 SelfAttention(128)              at 32x32
    down2    Down(128 -> 256)  + sa2 SelfAttention(256)              at 16x16
    down3    Down(256 -> 256)  + sa3 SelfAttention(256)              at  8x8
    bot1..3  DoubleConv 256 -> 512, 512 -> 512, 512 -> 256           at  8x8
    up1      Up(512 -> 128), skip down2, + sa4 SelfAttention(128)    at 16x16
    up2      Up(256 -> 64),  skip down1, + sa5 SelfAttention(64)     at 32x32
    up3      Up(128 -> 64),  skip inc,   + sa6 SelfAttention(64)     at 64x64
    outc     conv1x1(64 -> 3)

Conditioning: sinusoidal(t) of width 256 (sin half, then cos half) plus ``label_emb(y)``, no MLP;
each Down/Up adds SiLU -> Linear(256 -> out) of it. Dropout(0.1) on the input image in training.
The original returned attention weights from nn.MultiheadAttention (``need_weights=True``), which
never takes the fused kernel; ``need_weights`` keeps that (the faithful default) or turns it off.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from facediff.models.layers import capturing_attention, embed_classes


def pos_encoding(t: Tensor, channels: int) -> Tensor:
    """The original's encoding: cat(sin(t f), cos(t f)), f_i = 1 / 10000^(2i / channels): (B, C)."""
    inv_freq = 1.0 / (
        10000 ** (torch.arange(0, channels, 2, device=t.device).float() / channels)
    )  # (C/2,)
    args = t.float()[:, None] * inv_freq[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class DoubleConv(nn.Module):
    """conv3x3 -> GroupNorm(1) -> GELU -> conv3x3 -> GroupNorm(1); residual: GELU(x + that)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mid_channels: int | None = None,
        residual: bool = False,
    ) -> None:
        super().__init__()
        mid = mid_channels or out_channels
        self.residual = residual
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid, 3, padding=1, bias=False),
            nn.GroupNorm(1, mid),
            nn.GELU(),
            nn.Conv2d(mid, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(1, out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.residual:
            return F.gelu(x + self.double_conv(x))
        return self.double_conv(x)


class Down(nn.Module):
    """MaxPool2d(2) -> residual DoubleConv(in) -> DoubleConv(in -> out), plus the time term."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int = 256) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(
            nn.MaxPool2d(2),
            DoubleConv(in_channels, in_channels, residual=True),
            DoubleConv(in_channels, out_channels),
        )
        self.emb_layer = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        x = self.maxpool_conv(x)  # (B, out, H/2, W/2)
        return x + self.emb_layer(emb)[:, :, None, None]


class Up(nn.Module):
    """Bilinear x2 -> cat(skip, x) -> residual DoubleConv(in) -> DoubleConv(in -> out, mid in/2)."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int = 256) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = nn.Sequential(
            DoubleConv(in_channels, in_channels, residual=True),
            DoubleConv(in_channels, out_channels, in_channels // 2),
        )
        self.emb_layer = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))

    def forward(self, x: Tensor, skip: Tensor, emb: Tensor) -> Tensor:
        x = self.conv(torch.cat([skip, self.up(x)], dim=1))  # (B, out, 2H, 2W)
        return x + self.emb_layer(emb)[:, :, None, None]


class SelfAttention(nn.Module):
    """Pre-LN transformer block over the H*W pixels: MHA(4 heads) + residual, then LN -> FF."""

    def __init__(self, channels: int, heads: int = 4, need_weights: bool = True) -> None:
        super().__init__()
        self.channels = channels
        self.need_weights = need_weights
        self.mha = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.ln = nn.LayerNorm([channels])
        self.ff_self = nn.Sequential(
            nn.LayerNorm([channels]),
            nn.Linear(channels, channels),
            nn.GELU(),
            nn.Linear(channels, channels),
        )
        self.name = "attn"  # set by OriginalUNet to the module name
        self.capture: dict[str, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        tokens = x.reshape(B, C, H * W).transpose(1, 2)  # (B, HW, C)
        x_ln = self.ln(tokens)
        if self.capture is not None:
            out, weights = self.mha(x_ln, x_ln, x_ln, need_weights=True, average_attn_weights=False)
            self.capture[self.name] = weights.detach().float()  # (B, heads, HW, HW)
        else:
            out, _ = self.mha(x_ln, x_ln, x_ln, need_weights=self.need_weights)
        out = out + tokens
        out = self.ff_self(out) + out
        return out.transpose(1, 2).reshape(B, C, H, W)


class OriginalUNet(nn.Module):
    """The original conditional UNet with facediff's model interface (see ``UNet``).

    Args:
        image_size: side of the square inputs (a multiple of 8; the original used 64).
        num_classes: real classes; id ``num_classes`` is the null class (``label_emb`` has
            ``num_classes + 1`` rows).
        time_dim: width of the time encoding and of the class embedding (256).
        attn_heads: heads of every nn.MultiheadAttention (4).
        input_dropout: dropout on the input image in training (0.1).
        need_weights: ask nn.MultiheadAttention for the weights as the original did (no fused path).
        grad_checkpoint: recompute every block in backward while training (the original did).
    """

    def __init__(
        self,
        image_size: int,
        num_classes: int,
        in_channels: int = 3,
        out_channels: int = 3,
        time_dim: int = 256,
        attn_heads: int = 4,
        input_dropout: float = 0.1,
        need_weights: bool = True,
        grad_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if image_size < 8 or image_size % 8:
            raise ValueError(
                f"image_size must be a multiple of 8 (three 2x poolings): {image_size}"
            )
        self.image_size, self.num_classes = image_size, num_classes
        self.in_channels, self.time_dim = in_channels, time_dim
        self.grad_checkpoint = grad_checkpoint

        def sa(c: int) -> SelfAttention:
            return SelfAttention(c, attn_heads, need_weights)

        self.input_dropout = nn.Dropout(input_dropout)
        self.inc = DoubleConv(in_channels, 64)
        self.down1, self.sa1 = Down(64, 128, time_dim), sa(128)
        self.down2, self.sa2 = Down(128, 256, time_dim), sa(256)
        self.down3, self.sa3 = Down(256, 256, time_dim), sa(256)
        self.bot1 = DoubleConv(256, 512)
        self.bot2 = DoubleConv(512, 512)
        self.bot3 = DoubleConv(512, 256)
        self.up1, self.sa4 = Up(512, 128, time_dim), sa(128)
        self.up2, self.sa5 = Up(256, 64, time_dim), sa(64)
        self.up3, self.sa6 = Up(128, 64, time_dim), sa(64)
        self.outc = nn.Conv2d(64, out_channels, 1)
        self.label_emb = nn.Embedding(num_classes + 1, time_dim)  # last row: null class

        self._attn_res = {f"sa{i}": image_size >> s for i, s in enumerate((1, 2, 3, 2, 1, 0), 1)}
        self._attn_blocks: dict[str, SelfAttention] = {}
        for name in self._attn_res:
            block = getattr(self, name)
            block.name = name
            self._attn_blocks[name] = block

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def attention_layers(self) -> dict[str, int]:
        """{attention block name: pixel resolution}, in execution order (sa1 .. sa6)."""
        return dict(self._attn_res)

    @contextmanager
    def capture_attention(self) -> Iterator[dict[str, Tensor]]:
        """Inside the block, every forward stores (B, heads, HW, HW) float32 weights per layer."""
        with capturing_attention(self._attn_blocks.values()) as maps:
            yield maps

    def class_embedding(self, y: Tensor) -> Tensor:
        return embed_classes(self.label_emb, self.num_classes, y)

    def _run(self, block: nn.Module, *args: Tensor) -> Tensor:
        if self.grad_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """x: (B, C_in, S, S); t: (B,) or scalar timesteps; y: (B,) ids or (B, K) weights."""
        B, s = x.shape[0], self.image_size
        if x.dim() != 4 or x.shape[1:] != (self.in_channels, s, s):
            raise ValueError(
                f"x must have shape (B, {self.in_channels}, {s}, {s}), got {tuple(x.shape)}"
            )
        t = t.expand(B) if t.dim() == 0 else t
        if t.shape != (B,) or y.shape[0] != B:
            raise ValueError(f"t and y need batch size {B}: {tuple(t.shape)}, {tuple(y.shape)}")
        emb = pos_encoding(t, self.time_dim) + self.class_embedding(y)  # (B, time_dim)
        run = self._run
        x1 = run(self.inc, self.input_dropout(x))  # (B, 64, S, S)
        x2 = run(self.sa1, run(self.down1, x1, emb))  # (B, 128, S/2, S/2)
        x3 = run(self.sa2, run(self.down2, x2, emb))  # (B, 256, S/4, S/4)
        x4 = run(self.sa3, run(self.down3, x3, emb))  # (B, 256, S/8, S/8)
        x4 = run(self.bot3, run(self.bot2, run(self.bot1, x4)))
        h = run(self.sa4, run(self.up1, x4, x3, emb))  # (B, 128, S/4, S/4)
        h = run(self.sa5, run(self.up2, h, x2, emb))  # (B, 64, S/2, S/2)
        h = run(self.sa6, run(self.up3, h, x1, emb))  # (B, 64, S, S)
        return self.outc(h)  # (B, C_out, S, S)
