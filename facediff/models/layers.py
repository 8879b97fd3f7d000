"""Building blocks of the conditional UNet: embeddings, residual blocks, attention, resampling.

Every block here is plain PyTorch and knows nothing about where it sits in the network; the
UNet (``facediff.models.unet``) wires them together, names the attention blocks and decides
when to use gradient checkpointing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facediff.models.group_norm import group_norm


def random_words(count: int) -> Tensor:
    """`count` random int64 words on the CPU, every 64-bit value equally likely (torch's
    generator). 2.2x faster than `torch.randint` over the same range, which reduces each draw
    modulo 2**64 - 1 (4M 16-bit lanes: 2.8 against 6.1 ms on a Xeon with AMX)."""
    return torch.empty(count, dtype=torch.int64).random_(-(2**63), None)


class Dropout(nn.Dropout):
    """nn.Dropout (same arguments, no state) whose CPU training path draws 16 random bits per
    element, four at a time from 64-bit words: torch's CPU kernel draws one random number per
    element, one after another (`bernoulli_`: 14% of `unet_attn`'s bf16 training step on a
    Xeon with AMX). This path is 2.3x faster for a bf16 (16, 64, 64, 64) batch, forward and
    backward, and makes that step 1.11x faster (`python -m benchmarks.micro --only dropout`,
    BENCHMARKS.md run 22). p counts to the nearest 1/65536. On other devices, in eval mode, in
    place and under torch.compile (whose generated code draws its own masks): nn.Dropout's path."""

    def forward(self, x: Tensor) -> Tensor:
        dropped = round(self.p * 65536)
        native = not self.training or self.inplace or x.device.type != "cpu"
        if native or dropped in (0, 65536) or torch.compiler.is_compiling():
            return super().forward(x)
        n = x.numel()
        words = random_words((n + 3) // 4)
        # uniform on [-32768, 32767], laid out like x: the bits are iid, so any order will do
        strides = torch.empty_like(x, dtype=torch.int16, device="meta").stride()
        bits = words.view(torch.int16)[:n].as_strided(x.shape, strides)
        keep = bits >= dropped - 32768  # P(keep) = (65536 - dropped) / 65536
        return x * (keep.to(x.dtype) * (65536 / (65536 - dropped)))


def zero_module(module: nn.Module) -> nn.Module:
    """Zero all parameters of ``module`` so that a residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer-style sinusoidal embedding of (possibly fractional) timesteps.

    Returns ``cat(sin(t * f), cos(t * f))`` with frequencies ``f_i = max_period ** (-i / half)``,
    always computed in float32: under fp16 autocast, ``t * f`` for t ~ 1000 would lose
    most of its fractional part and the high-frequency features would be noise.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )  # (half,)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)  # (B, 2 * half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))  # (B, dim)
    return emb


class TimestepEmbedding(nn.Module):
    """Sinusoidal features of width ``freq_channels`` followed by Linear -> SiLU -> Linear."""

    def __init__(self, freq_channels: int, emb_channels: int) -> None:
        super().__init__()
        self.freq_channels = freq_channels
        self.mlp = nn.Sequential(
            nn.Linear(freq_channels, emb_channels),
            nn.SiLU(),
            nn.Linear(emb_channels, emb_channels),
        )

    def forward(self, t: Tensor) -> Tensor:
        # t: (B,) int or float -> (B, emb_channels)
        return self.mlp(sinusoidal_embedding(t, self.freq_channels))


class ResBlock(nn.Module):
    """Residual block conditioned on an embedding through scale-shift normalisation (AdaGN).

    x -> GN -> SiLU -> conv3x3 -> GN * (1 + scale) + shift -> SiLU -> Dropout -> conv3x3 (zero)
    plus a (1x1 conv) skip, where (scale, shift) = Linear(SiLU(emb)).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        dropout: float = 0.0,
        groups: int = 32,
    ) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_channels, 2 * out_channels)
        self.norm2 = group_norm(out_channels, groups)
        self.dropout = Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        # x: (B, C_in, H, W), emb: (B, E) -> (B, C_out, H, W)
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        scale, shift = self.emb_proj(F.silu(emb)).chunk(2, dim=1)  # (B, C_out) each
        h = self.norm2(h, scale, shift)  # GN(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d)) v by ``F.scaled_dot_product_attention``; (B, heads, L, d) each.

    On a CPU it runs in fp32 whatever the autocast dtype: torch's fused CPU kernel is slow in
    bf16, and this path, casts included, is 4.6x faster at 64 tokens and 1.07x at 1,024
    (forward + backward on a Xeon with AMX, `python -m benchmarks.micro --only lowp`,
    BENCHMARKS.md run 19). On a GPU autocast decides.
    """
    if q.device.type != "cpu" or q.dtype == torch.float32:
        return F.scaled_dot_product_attention(q, k, v)
    with torch.autocast("cpu", enabled=False):
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    return out.to(q.dtype)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W pixels of a feature map, with a residual.

    The normal path uses ``F.scaled_dot_product_attention`` (fused kernels, the weights are
    never materialised). When ``capture`` is set to a dict (the UNet does this inside
    ``UNet.capture_attention()``), the weights are computed explicitly as
    ``softmax(q k^T / sqrt(d))`` and stored, detached, under ``capture[self.name]``.
    """

    def __init__(self, channels: int, heads: int = 4, groups: int = 32) -> None:
        super().__init__()
        if heads < 1 or channels % heads != 0:
            raise ValueError(
                f"attention: attn_heads={heads} must be >= 1 and divide the {channels} channels"
            )
        self.heads = heads
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv2d(channels, channels, 1))
        self.name = "attn"  # set by the UNet to the block's module path
        self.capture: dict[str, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        d, L = C // self.heads, H * W
        # Token layout (B, L, C): q, k and v come out as (B, heads, L, d) views whose last dim is
        # contiguous, which the fused CPU kernel of SDPA requires; with the (B, 3, heads, d, L)
        # layout of a 1x1 conv they were strided and SDPA fell back to its unfused math path
        # (bmm + safe softmax + L x L weights: 3.3x slower at 32x32 in fp32, BENCHMARKS.md).
        # The weights stay those of the 1x1 convolutions, so checkpoints are unchanged.
        tokens = self.norm(x).reshape(B, C, L).transpose(1, 2)  # (B, L, C)
        qkv = F.linear(tokens, self.qkv.weight.view(3 * C, C), self.qkv.bias)  # (B, L, 3C)
        q, k, v = qkv.view(B, L, 3, self.heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        if self.capture is None:
            out = attention(q, k, v)  # (B, heads, L, d)
        else:
            s = d**-0.25  # split 1/sqrt(d) over q and k: keeps fp16 logits from overflowing
            logits = (q * s) @ (k * s).transpose(-1, -2)  # (B, heads, L, L)
            weights = logits.float().softmax(dim=-1)
            self.capture[self.name] = weights.detach()
            out = weights.to(v.dtype) @ v  # (B, heads, L, d)
        out = out.transpose(1, 2).reshape(B, L, C)  # heads concatenated, as the conv's channels
        out = F.linear(out, self.proj.weight.view(C, C), self.proj.bias)  # (B, L, C)
        return x + out.transpose(1, 2).reshape(B, C, H, W)


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_channels = channels
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)  # (B, C, H, W) -> (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour x2 followed by a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_channels = channels
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # -> (B,C,2H,2W)


def embed_classes(table: nn.Embedding, num_classes: int, y: Tensor) -> Tensor:
    """Embed class ids (B,) in 0..num_classes (num_classes = null) or class weights
    (B, num_classes) or (B, num_classes + 1) (last column: null), whose embedding is the
    weighted sum of the class rows (class blends): (B, E)."""
    n = num_classes
    if y.dim() == 1 and not y.is_floating_point() and y.dtype != torch.bool:
        in_range = ((y >= 0) & (y <= n)).all()
        msg = f"class ids must be in 0..{n} ({n} = null/unconditional class)"
        if y.is_cuda:  # no host sync on the GPU: a device-side assert instead
            torch._assert_async(in_range, msg)
        elif not in_range:
            raise ValueError(f"{msg}, got {y[(y < 0) | (y > n)].unique().tolist()}")
        return table(y)  # (B, E)
    if y.dim() == 2 and y.is_floating_point() and y.shape[1] in (n, n + 1):
        weight = table.weight[: y.shape[1]]  # (n or n+1, E)
        return y.to(weight.dtype) @ weight  # (B, E)
    raise ValueError(
        f"y must be integer class ids of shape (B,) or float class weights of shape "
        f"(B, {n}) or (B, {n + 1}); got dtype {y.dtype} and shape {tuple(y.shape)}"
    )


@contextmanager
def capturing_attention(blocks: Iterable[nn.Module]) -> Iterator[dict[str, Tensor]]:
    """Point every block's `capture` at one dict for the duration of the `with` block; the
    blocks store their (detached, float32) weights under their names there."""
    blocks = list(blocks)
    maps: dict[str, Tensor] = {}
    for block in blocks:
        block.capture = maps
    try:
        yield maps
    finally:
        for block in blocks:
            block.capture = None
