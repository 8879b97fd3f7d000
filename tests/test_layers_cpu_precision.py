"""The CPU low-precision paths of facediff's layers: attention runs in fp32 for bf16 inputs on a
CPU, GroupNorm takes its own backward for 16-bit channels_last inputs (speed); both must give
nn's results and gradients, in the input's dtype (tests/test_group_norm.py: the backward's
precision)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from facediff.models.group_norm import GroupNorm, group_norm
from facediff.models.layers import attention

BF16 = torch.bfloat16


@pytest.fixture
def qkv() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(2, 4, 64, 16, generator=g) for _ in range(3))  # (B, heads, L, d)


def test_attention_bf16_under_autocast_matches_fp32(qkv: tuple[torch.Tensor, ...]) -> None:
    q, k, v = (t.to(BF16).requires_grad_() for t in qkv)
    with torch.autocast("cpu", dtype=BF16):
        out = attention(q, k, v)
    assert out.dtype == BF16  # the caller's dtype, although computed in fp32
    ref = F.scaled_dot_product_attention(*(t.detach().float() for t in (q, k, v)))
    torch.testing.assert_close(out.float(), ref, atol=1e-2, rtol=1e-2)
    out.float().square().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == BF16 for t in (q, k, v))


def test_attention_fp32_is_plain_sdpa(qkv: tuple[torch.Tensor, ...]) -> None:
    torch.testing.assert_close(attention(*qkv), F.scaled_dot_product_attention(*qkv))


def test_group_norm_is_a_drop_in_nn_group_norm() -> None:
    norm = group_norm(32, 8)
    assert isinstance(norm, nn.GroupNorm) and norm.num_groups == 8
    assert norm.state_dict().keys() == nn.GroupNorm(8, 32).state_dict().keys()


@pytest.mark.parametrize("channels_last", [True, False])
def test_group_norm_bf16_matches_fp32(channels_last: bool) -> None:
    torch.manual_seed(0)
    norm, ref = GroupNorm(4, 16, eps=1e-6), nn.GroupNorm(4, 16, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    ref.load_state_dict(norm.state_dict())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 16, 8, 8).to(BF16).contiguous(memory_format=fmt).requires_grad_()
    with torch.autocast("cpu", dtype=BF16):
        out = norm(x)
    assert out.dtype == BF16
    assert out.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(out.float(), ref(x.detach().float()), atol=3e-2, rtol=2e-2)
    out.float().sum().backward()
    assert x.grad is not None and norm.weight.grad is not None
    assert norm.weight.grad.dtype == torch.float32 and torch.isfinite(norm.weight.grad).all()


def test_group_norm_with_bf16_weights_channels_last() -> None:
    """A network cast to bf16 entirely (no autocast) takes the channels_last path too."""
    norm = GroupNorm(4, 16).to(BF16)
    x = torch.randn(2, 16, 8, 8).to(BF16).contiguous(memory_format=torch.channels_last)
    out = norm(x)
    assert out.dtype == BF16 and torch.isfinite(out.float()).all()
