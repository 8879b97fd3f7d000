"""facediff.models.layers.Dropout: nn.Dropout's contract with a faster mask on a CPU."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from facediff.models import layers
from facediff.models.layers import Dropout, random_words


def scale_of(p: float) -> float:
    return 65536 / (65536 - round(p * 65536))


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_drops_exactly_its_share_of_every_16_bit_value(
    p: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Words whose 16-bit lanes run through all 65,536 values: exactly round(p * 65536) drop."""
    every_value = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)

    def words(count: int) -> torch.Tensor:
        assert count == 16384
        return every_value.view(torch.int64)

    monkeypatch.setattr(layers, "random_words", words)
    out = Dropout(p)(torch.ones(65536))
    assert int((out == 0).sum()) == round(p * 65536)
    torch.testing.assert_close(out[out != 0], torch.full((65536 - round(p * 65536),), scale_of(p)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_drops_a_share_p_and_keeps_the_mean(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    out = Dropout(0.1)(torch.ones(1000, 1000, dtype=dtype))
    assert out.dtype == dtype and out.shape == (1000, 1000)
    assert abs((out == 0).float().mean().item() - 0.1) < 0.002  # standard error 0.0003
    kept = out[out != 0].float()
    rtol = 4e-3 if dtype == torch.bfloat16 else 1e-6  # bf16 rounds the scale, as nn.Dropout does
    torch.testing.assert_close(kept, torch.full_like(kept, scale_of(0.1)), rtol=rtol, atol=0)
    assert abs(out.float().mean().item() - 1.0) < 0.005


def test_the_four_lanes_of_a_word_drop_independently() -> None:
    torch.manual_seed(0)
    dropped = (Dropout(0.1)(torch.ones(400_000)) == 0).view(-1, 4).float()  # (words, lanes)
    assert (dropped.mean(0) - 0.1).abs().max().item() < 0.006  # standard error 0.0009
    both = dropped.T @ dropped / len(dropped)  # (4, 4): share of words with both lanes dropped
    off_diagonal = both[~torch.eye(4, dtype=torch.bool)]
    assert (off_diagonal - 0.01).abs().max().item() < 0.002  # standard error 0.0003


def test_gradient_is_the_same_mask() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 16, 8, 8, requires_grad=True)
    out = Dropout(0.3)(x)
    out.sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, (out != 0).float() * scale_of(0.3))
    torch.testing.assert_close(out, x.detach() * x.grad)


def test_seeded_draws_repeat_and_layouts_are_kept() -> None:
    x = torch.randn(4, 8, 16, 16).contiguous(memory_format=torch.channels_last)
    torch.manual_seed(1)
    a = Dropout(0.2)(x)
    torch.manual_seed(1)
    b = Dropout(0.2)(x)
    torch.testing.assert_close(a, b)
    assert a.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(8, 16)[:, ::2],  # strided
        lambda: torch.randn(1, 4).expand(8, 4),  # expanded
        lambda: torch.randn(0, 3),  # empty
        lambda: torch.tensor(2.0),  # 0-dim
    ],
)
def test_any_input_layout(make: Any) -> None:
    torch.manual_seed(0)
    x = make()
    out = Dropout(0.5)(x)
    assert out.shape == x.shape
    assert torch.all((out == 0) | torch.isclose(out, x * scale_of(0.5)))


def test_gradient_checkpointing_recomputes_the_same_mask() -> None:
    layer, x = nn.Linear(32, 32), torch.randn(64, 32, requires_grad=True)

    def block(h: torch.Tensor) -> torch.Tensor:
        return layer(Dropout(0.5)(h))

    torch.manual_seed(0)
    block(x).square().sum().backward()
    plain = x.grad.clone()
    x.grad = None
    torch.manual_seed(0)
    checkpoint(block, x, use_reentrant=False).square().sum().backward()
    torch.testing.assert_close(x.grad, plain)


@pytest.mark.parametrize("p", [0.0, 1e-6, 1.0])
def test_edge_probabilities_behave_like_nn_dropout(p: float) -> None:
    x = torch.randn(64, 64)
    torch.manual_seed(0)
    ours = Dropout(p)(x)
    torch.manual_seed(0)
    torch.testing.assert_close(ours, nn.Dropout(p)(x))


def test_eval_mode_and_state_dict_are_nn_dropouts() -> None:
    layer = Dropout(0.1).eval()
    x = torch.randn(4, 4)
    torch.testing.assert_close(layer(x), x)
    assert isinstance(layer, nn.Dropout) and layer.state_dict() == {}


def test_random_words_fill_every_16_bit_lane_uniformly() -> None:
    """The mask's bits: each of a word's four 16-bit lanes uniform over all 65,536 values
    (a generator drawing 63-bit words would leave one lane's sign bit always 0), and
    reproducible from torch's seed."""
    torch.manual_seed(0)
    lanes = random_words(1 << 16).view(torch.int16).view(-1, 4).float()  # (65536, 4)
    assert lanes.min() == -32768 and lanes.max() == 32767
    negative = (lanes < 0).float().mean(0)  # (4,): 0.5 each, +-0.002 is 1 sigma
    assert ((negative - 0.5).abs() < 0.01).all(), negative
    torch.testing.assert_close(lanes.std(0), torch.full((4,), 65536 / 12**0.5), rtol=0.02, atol=0)
    torch.manual_seed(0)
    assert torch.equal(random_words(1 << 16).view(torch.int16).view(-1, 4).float(), lanes)
