"""GroupNorm with a fast backward for channels_last tensors on a CPU.

torch's CPU GroupNorm is fast for contiguous (NCHW) tensors in every dtype and for the forward
of channels_last (NHWC) ones, but its NHWC backward is not: on a Xeon with AMX, a bf16
(16, 64, 64, 64) batch took 34 ms forward + backward in NHWC against 3.8 ms in NCHW. A
convolution in bf16, meanwhile, reorders every NCHW input to NHWC and back (about a fifth of
`unet_attn`'s bf16 step), so the network is fastest in channels_last only if GroupNorm is too.

``ChannelsLastGroupNorm`` keeps torch's forward (``aten.native_group_norm``, which also returns
the per-group mean and 1/std) and computes the backward on the (B, H*W, C) view of the NHWC
tensors, where every step is a batched matmul or a broadcast elementwise op that torch
vectorises. With x the input, mu and rstd its group statistics, xc = x - mu, n = H*W*C/G and
the sums per sample and channel s1 = sum_hw dy, s2 = sum_hw dy * xc (Wu & He 2018's
normalisation, differentiated):

    d_bias   = sum_b s1                          d_weight = sum_b rstd * s2
    db_g = sum_{c in g} weight_c * s1            ds_g     = sum_{c in g} weight_c * s2
    dx   = rstd * weight * dy  -  ds_g * rstd**3 / n * xc  -  db_g * rstd / n

Centring x before the product, on the mean's part that x's dtype holds, keeps d_weight at the
dtype's rounding (1.9e-3 in bf16) when a group's mean is large against its spread: sum dy * x -
mu * sum dy in bf16 lost 4% of d_weight at mean 10, std 1, centring on the mean rounded to
bf16 2% (tests/test_group_norm.py).
Benchmark: `python -m benchmarks.micro --only groupnorm`, BENCHMARKS.md run 28.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


class ChannelsLastGroupNorm(torch.autograd.Function):
    """GroupNorm of a channels_last tensor: torch's forward, the backward above. The affine
    weight and bias are per channel, (C,), or per sample and channel, (B, C): the adaptive
    GroupNorm of a ResBlock, GN(x) * (1 + scale) + shift, is this with weight * (1 + scale) and
    bias * (1 + scale) + shift, and its backward needs no more than the sums s1 and s2."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float
    ) -> Tensor:
        B, C, H, W = x.shape
        per_sample = weight.dim() == 2
        # an fp32 affine, if only ones and zeros: without one, a 16-bit x gets its mean and
        # 1/std back in 16 bits, too coarse for the backward (d_scale 4x torch's error)
        one = torch.ones(C, dtype=torch.float32, device=x.device)
        affine = (one, torch.zeros_like(one)) if per_sample else (weight, bias)
        y, mean, rstd = torch.ops.aten.native_group_norm(x, *affine, B, C, H * W, groups, eps)
        if per_sample:  # one multiply-add pass, in place on the normalised x
            w4, b4 = (t.to(x.dtype)[:, :, None, None] for t in (weight, bias))  # (B, C, 1, 1)
            y = torch.addcmul(b4, y, w4, out=y)
        ctx.save_for_backward(x, weight, mean, rstd)  # mean, rstd: (B, G)
        ctx.groups = groups
        return y  # (B, C, H, W), channels_last, x's dtype

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:
        x, weight, mean, rstd = ctx.saved_tensors
        B, C, H, W = x.shape
        G, L, dt = ctx.groups, H * W, x.dtype
        cpg = C // G  # channels per group
        n = cpg * L  # elements per group and sample

        def per_channel(t: Tensor) -> Tensor:  # (B, G, 1) -> (B, 1, C) in x's dtype
            return t.expand(B, G, cpg).reshape(B, 1, C).to(dt)

        def tokens(t: Tensor) -> Tensor:  # (B, C, H, W) channels_last -> its (B, L, C) view
            return t.permute(0, 2, 3, 1).reshape(B, L, C)

        x3 = tokens(x)  # (B, L, C)
        dy3 = tokens(dy.contiguous(memory_format=torch.channels_last))  # (B, L, C)
        mean = mean.float().view(B, G, 1)
        rstd = rstd.float().view(B, G, 1)
        # mu = mu_hi + mu_lo with mu_hi in x's dtype: x - mu_hi is exact where it matters (x
        # near mu), and the small mu_lo is taken off the sums afterwards, in fp32
        mean_hi = mean.to(dt)
        mean_lo = mean - mean_hi.float()
        xc = x3 - per_channel(mean_hi)  # (B, L, C): x - mu_hi
        ones = x3.new_ones(B, 1, L)
        s1 = torch.bmm(ones, dy3).float().view(B, G, cpg)  # sum_hw dy
        s2 = torch.bmm(ones, dy3 * xc).float().view(B, G, cpg)  # sum_hw dy * (x - mu_hi)
        s2 = s2 - mean_lo * s1  # sum_hw dy * (x - mu)
        w = weight.float().view(-1, G, cpg)  # (1 or B, G, cpg)
        db = (s1 * w).sum(-1, keepdim=True)  # (B, G, 1)
        ds = (s2 * w).sum(-1, keepdim=True)  # (B, G, 1)
        c2 = -ds * rstd**3 / n  # the factor of x - mu in dx
        dx3 = torch.addcmul(per_channel(c2 * mean_lo - db * rstd / n), xc, per_channel(c2))
        dx3.addcmul_(dy3, (rstd * w).reshape(B, 1, C).to(dt))
        dx = dx3.view(B, H, W, C).permute(0, 3, 1, 2)  # (B, C, H, W), channels_last
        d_weight = (rstd * s2).reshape(B, C)  # sum_hw dy * x_hat
        d_bias = s1.reshape(B, C)
        if weight.dim() == 1:
            d_weight, d_bias = d_weight.sum(0), d_bias.sum(0)
        return dx, d_weight.to(weight.dtype), d_bias.to(weight.dtype), None, None


# Below this many pixels per channel (32x32), torch's NHWC forward is slow (7.7 ms against 0.3
# NCHW for a bf16 (64, 64, 16, 16) batch) and the backward's fixed cost dominates: there the
# tensor goes through torch's NCHW kernel and back (BENCHMARKS.md run 28)
MIN_PIXELS = 1024


def takes_channels_last_path(x: Tensor) -> bool:
    """Whether ``GroupNorm`` treats ``x`` as a 16-bit channels_last CPU batch: 4-d, channels_last
    (and not also contiguous), bf16 or fp16, outside torch.compile. fp32 NHWC keeps torch's
    kernel: its backward is 1.5-2.5x its NCHW one, and the backward above does not beat it."""
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and x.dtype in (torch.bfloat16, torch.float16)
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
        and not torch.compiler.is_compiling()
    )


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm (same parameters and state_dict) with a fast path for 16-bit channels_last
    CPU batches: ``ChannelsLastGroupNorm`` from 32x32 up, torch's NCHW kernel (and back to
    channels_last) below. Every other input takes nn.GroupNorm's own path.

    Given ``scale`` and ``shift`` ((B, C) each) it returns the adaptive GroupNorm of a
    conditioned ResBlock, GN(x) * (1 + scale) + shift: on the fast path folded into the
    normalisation's affine, which saves the separate multiply and add passes over the feature
    map and their backward (BENCHMARKS.md run 29); elsewhere as those two ops."""

    def forward(
        self, x: Tensor, scale: Tensor | None = None, shift: Tensor | None = None
    ) -> Tensor:
        if (scale is None) != (shift is None):
            raise ValueError("GroupNorm: give both scale and shift, or neither")
        fast = self.affine and takes_channels_last_path(x)
        if fast and x.shape[-2] * x.shape[-1] >= MIN_PIXELS:
            weight, bias = self.weight, self.bias
            if scale is not None and shift is not None:
                gain = 1 + scale.float()  # (B, C)
                weight, bias = weight * gain, bias * gain + shift.float()
            with torch.autocast("cpu", enabled=False):  # the output stays in x's dtype
                return ChannelsLastGroupNorm.apply(x, weight, bias, self.num_groups, self.eps)
        if fast:
            with torch.autocast("cpu", enabled=False):
                out = super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)
        else:
            out = super().forward(x)
        if scale is None or shift is None:
            return out
        return out * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


def fast_in_channels_last(net: nn.Module) -> bool:
    """Whether `net` has no GroupNorm of torch's own (whose 16-bit channels_last CPU backward is
    5-10x its NCHW one): the networks where channels_last pays on a CPU in 16-bit."""
    return not any(type(m) is nn.GroupNorm for m in net.modules())


def group_norm(channels: int, groups: int) -> GroupNorm:
    """GroupNorm with ``min(groups, channels)`` groups, failing loudly if they do not divide."""
    g = min(groups, channels)
    if channels % g != 0:
        raise ValueError(
            f"GroupNorm: {g} groups do not divide {channels} channels; choose `groups` so that it "
            f"divides every feature width of the network (including the decoder's concatenated "
            f"skip widths), e.g. a power of two no larger than base_channels"
        )
    return GroupNorm(g, channels, eps=1e-6)
