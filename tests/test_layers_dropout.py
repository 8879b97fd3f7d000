"""facediff.models.layers.Dropout: nn.Dropout's contract with a faster mask on a CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from facediff.models.layers import Dropout


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_drops_a_share_p_and_keeps_the_mean(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    x = torch.ones(1000, 1000, dtype=dtype)
    out = Dropout(0.1)(x)
    assert out.dtype == dtype and out.shape == x.shape
    dropped = (out == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.002  # 1e6 draws: the share's standard error is 0.0003
    kept = out[out != 0].float()
    scale = torch.full_like(kept, 65536 / (65536 - 6554))
    torch.testing.assert_close(kept, scale, rtol=4e-3 if dtype == torch.bfloat16 else 1e-6, atol=0)
    assert abs(out.float().mean().item() - 1.0) < 0.005  # scaled so the mean is kept


def test_masks_are_independent_of_position() -> None:
    """Four 16-bit draws share a 64-bit word: neighbours must still drop independently."""
    torch.manual_seed(0)
    dropped = Dropout(0.5)(torch.ones(400_000)) == 0
    pairs = dropped.view(-1, 4)  # the four elements of one word
    both = (pairs[:, :-1] & pairs[:, 1:]).float().mean().item()
    assert abs(both - 0.25) < 0.005
    assert abs(dropped.view(-1, 4).float().mean(0) - 0.5).max().item() < 0.01  # every lane


def test_gradient_is_the_same_mask() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 16, 8, 8, requires_grad=True)
    out = Dropout(0.3)(x)
    out.sum().backward()
    scale = 65536 / (65536 - round(0.3 * 65536))
    assert x.grad is not None
    torch.testing.assert_close(x.grad, (out != 0).float() * scale)
    torch.testing.assert_close(out, x.detach() * x.grad)


def test_seeded_draws_repeat_and_layouts_are_kept() -> None:
    x = torch.randn(4, 8, 16, 16).contiguous(memory_format=torch.channels_last)
    torch.manual_seed(1)
    a = Dropout(0.2)(x)
    torch.manual_seed(1)
    b = Dropout(0.2)(x)
    torch.testing.assert_close(a, b)
    assert a.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_edge_probabilities_behave_like_nn_dropout(p: float) -> None:
    x = torch.randn(64, 64)
    torch.testing.assert_close(Dropout(p)(x), nn.Dropout(p)(x))


def test_eval_mode_and_state_dict_are_nn_dropouts() -> None:
    layer = Dropout(0.1).eval()
    x = torch.randn(4, 4)
    assert layer(x) is x or torch.equal(layer(x), x)
    assert isinstance(layer, nn.Dropout) and layer.state_dict() == {}
