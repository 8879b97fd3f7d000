"""ChannelsLastGroupNorm: torch's forward and a hand-written backward for 16-bit channels_last
CPU tensors. Its gradients are checked against float64 on the same (rounded) inputs, next to
torch's own NCHW kernel in the same dtype: the new path may not be less precise than that."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from facediff.models.group_norm import MIN_PIXELS, GroupNorm, takes_channels_last_path

CL = torch.channels_last


def rel_err(a: Tensor, ref: Tensor) -> float:
    return ((a.double() - ref).norm() / ref.norm()).item()


def grads(norm: torch.nn.GroupNorm, x: Tensor, dy: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(output, dx, d_weight, d_bias) of `norm` at x for the upstream gradient dy."""
    norm.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    out = norm(x)
    out.backward(dy)
    assert x.grad is not None and norm.weight.grad is not None and norm.bias.grad is not None
    return out, x.grad, norm.weight.grad, norm.bias.grad


@pytest.fixture
def affine() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(32, generator=g) + 0.5, torch.randn(32, generator=g)  # weight, bias


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mean", [0.0, 10.0])  # a group mean 10x its spread: no cancellation
@pytest.mark.parametrize("size", [32, 8])  # ChannelsLastGroupNorm; torch's NCHW kernel and back
def test_gradients_match_float64_as_closely_as_torchs_nchw_kernel(
    dtype: torch.dtype, mean: float, size: int, affine: tuple[Tensor, Tensor]
) -> None:
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 32, size, size, generator=g) + mean).to(dtype)
    dy = torch.randn(3, 32, size, size, generator=g).to(dtype)
    ref = torch.nn.GroupNorm(8, 32, eps=1e-6).double()
    norm = GroupNorm(8, 32, eps=1e-6)
    torch_norm = torch.nn.GroupNorm(8, 32, eps=1e-6)
    for m in (ref, norm, torch_norm):
        with torch.no_grad():
            m.weight.copy_(affine[0])
            m.bias.copy_(affine[1])
    expected = grads(ref, x.double(), dy.double())
    x_cl, dy_cl = x.contiguous(memory_format=CL), dy.contiguous(memory_format=CL)
    assert takes_channels_last_path(x_cl) and not takes_channels_last_path(x)
    ours = grads(norm, x_cl, dy_cl)
    custom = ours[0].grad_fn is not None and "ChannelsLast" in type(ours[0].grad_fn).__name__
    assert custom == (size * size >= MIN_PIXELS)
    theirs = grads(torch_norm, x, dy)  # torch's NCHW kernel, same dtype
    assert ours[0].dtype == dtype and ours[0].is_contiguous(memory_format=CL)
    assert ours[1].dtype == dtype and ours[1].is_contiguous(memory_format=CL)
    assert ours[2].dtype == ours[3].dtype == torch.float32
    for name, a, b, r in zip(
        ("out", "dx", "d_weight", "d_bias"), ours, theirs, expected, strict=True
    ):
        # within 2x torch's own error, or at the dtype's rounding (2**-8) where torch is exact
        assert rel_err(a, r) <= max(2 * rel_err(b, r), 4e-3), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("size", [32, 8])  # folded into ChannelsLastGroupNorm; torch's ops
def test_adaptive_scale_shift_matches_float64_as_closely_as_torchs_ops(
    dtype: torch.dtype, size: int, affine: tuple[Tensor, Tensor]
) -> None:
    """GN(x) * (1 + scale) + shift: every gradient (x, weight, bias, scale, shift) against
    float64, next to the same expression in torch's own NCHW ops and the same dtype."""
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(3, 32, size, size, generator=g) + 10.0).to(dtype)
    dy = torch.randn(3, 32, size, size, generator=g).to(dtype)
    scale, shift = (torch.randn(3, 32, generator=g).to(dtype) for _ in range(2))

    def run(norm: torch.nn.GroupNorm, x: Tensor, ours: bool) -> list[Tensor]:
        leaves = [t.detach().clone().requires_grad_() for t in (x, scale, shift)]
        xi, sc, sh = leaves
        with torch.no_grad():
            norm.weight.copy_(affine[0])
            norm.bias.copy_(affine[1])
        if ours:
            out = norm(xi, sc, sh)
        else:
            out = norm(xi) * (1 + sc[:, :, None, None]) + sh[:, :, None, None]
        out.backward(dy.to(out.dtype).contiguous(memory_format=CL) if ours else dy.to(out.dtype))
        return [out, *(t.grad for t in leaves), norm.weight.grad, norm.bias.grad]

    expected = run(torch.nn.GroupNorm(8, 32, eps=1e-6).double(), x.double(), ours=False)
    theirs = run(torch.nn.GroupNorm(8, 32, eps=1e-6), x, ours=False)
    ours = run(GroupNorm(8, 32, eps=1e-6), x.contiguous(memory_format=CL), ours=True)
    folded = "ChannelsLast" in type(ours[0].grad_fn).__name__ or any(
        "ChannelsLast" in type(f).__name__ for f, _ in ours[0].grad_fn.next_functions if f
    )
    assert folded == (size * size >= MIN_PIXELS)
    assert ours[0].dtype == dtype and ours[0].is_contiguous(memory_format=CL)
    names = ("out", "dx", "d_scale", "d_shift", "d_weight", "d_bias")
    for name, a, b, r in zip(names, ours, theirs, expected, strict=True):
        assert a is not None and b is not None and r is not None
        assert rel_err(a, r) <= max(2 * rel_err(b, r), 4e-3), name


def test_scale_without_shift_is_refused() -> None:
    with pytest.raises(ValueError, match="both scale and shift"):
        GroupNorm(4, 16)(torch.randn(2, 16, 4, 4), torch.zeros(2, 16))


def test_bf16_weights_give_bf16_gradients() -> None:
    norm = GroupNorm(4, 16).to(torch.bfloat16)
    x = torch.randn(2, 16, 4, 4).to(torch.bfloat16).contiguous(memory_format=CL)
    out, dx, dw, db = grads(norm, x, torch.ones_like(x))
    assert dw.dtype == db.dtype == torch.bfloat16
    assert torch.isfinite(dx.float()).all() and torch.isfinite(out.float()).all()


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(2, 16, 4, 4).to(torch.bfloat16),  # contiguous
        lambda: torch.randn(2, 16, 4, 4).contiguous(memory_format=CL),  # fp32
        lambda: torch.randn(2, 16, 1, 1).to(torch.bfloat16),  # both layouts at once
        lambda: torch.randn(2, 16, 5).to(torch.bfloat16),  # not 4-d
    ],
)
def test_other_inputs_take_torchs_path(make: Callable[[], Tensor]) -> None:
    x = make()
    assert not takes_channels_last_path(x)
    norm = GroupNorm(4, 16)
    torch.testing.assert_close(norm(x), F.group_norm(x, 4, norm.weight, norm.bias, norm.eps))


def test_unet_step_in_channels_last_matches_contiguous() -> None:
    """A whole bf16 network (both GroupNorm paths: 32 and 16 px): the same loss and close
    gradients in either memory format."""
    from facediff.models.unet import UNet

    kw = dict(image_size=32, num_classes=2, base_channels=16, channel_mult=[1, 2],
              num_res_blocks=1, attn_resolutions=[16], attn_heads=2, dropout=0.0,
              grad_checkpoint=False, groups=8)  # fmt: skip
    torch.manual_seed(0)
    a = UNet(**kw)
    with torch.no_grad():  # no zero-initialised layer left: every gradient flows
        for p in a.parameters():
            p.add_(0.05 * torch.randn_like(p))
    b = UNet(**kw).to(memory_format=CL)
    b.load_state_dict(a.state_dict())
    x, t, y = torch.randn(4, 3, 32, 32), torch.tensor([1, 50, 200, 400]), torch.tensor([0, 1, 2, 0])
    losses, norms = [], []
    for m, xin in ((a, x), (b, x.contiguous(memory_format=CL))):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = m(xin, t, y).float().square().mean()
        loss.backward()
        losses.append(loss.item())
        norms.append(torch.stack([p.grad.norm() for p in m.parameters()]))
    assert losses[0] == pytest.approx(losses[1], rel=2e-2)
    assert (norms[0] > 0).all()
    torch.testing.assert_close(norms[0], norms[1], rtol=5e-2, atol=1e-4)
