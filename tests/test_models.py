"""Tests for the conditional UNet (facediff.models); tiny configs, CPU only."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import facediff.models.unet as unet_module
from facediff.models import UNet
from facediff.models.layers import sinusoidal_embedding

NUM_CLASSES = 3


def tiny_kwargs(**overrides: Any) -> dict[str, Any]:
    kw = dict(
        image_size=16,
        num_classes=NUM_CLASSES,
        base_channels=16,
        channel_mult=[1, 2],
        num_res_blocks=1,
        attn_resolutions=[8],
        attn_heads=2,
        dropout=0.0,
        grad_checkpoint=False,
        groups=8,
    )
    return {**kw, **overrides}


def randomize_(net: nn.Module, std: float = 0.1) -> nn.Module:
    """Give every parameter random values, so zero-initialised branches are not trivial."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return net


def inputs(batch: int = 4, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    y = torch.arange(batch) % NUM_CLASSES
    return x, t, y


@pytest.fixture
def net() -> UNet:
    """Tiny UNet (attention at 8x8 in encoder, middle and decoder), random weights, eval mode."""
    torch.manual_seed(0)
    return randomize_(UNet(**tiny_kwargs())).eval()


@pytest.mark.parametrize(
    ("size", "mult"), [(16, [1, 2]), (24, [1, 2, 2]), (32, [1, 2, 2]), (48, [1, 1, 2, 2])]
)
def test_output_shape(size: int, mult: list[int]) -> None:
    m = UNet(**tiny_kwargs(image_size=size, channel_mult=mult, attn_resolutions=[size // 2]))
    x, t, y = inputs(2, size)
    out = m(x, t, y)
    assert out.shape == x.shape
    m2 = UNet(
        **tiny_kwargs(image_size=size, channel_mult=mult, attn_resolutions=[], out_channels=6)
    )
    assert m2(x, t, y).shape == (2, 6, size, size)


def test_zero_output_at_init() -> None:
    m = UNet(**tiny_kwargs())
    x, t, y = inputs()
    assert torch.equal(m(x, t, y), torch.zeros_like(x))
    m(x, t, y).sum().backward()
    assert m.out[-1].weight.grad.abs().sum() > 0  # the zero output conv still learns


def test_wrong_input_shapes_raise(net: UNet) -> None:
    x, t, y = inputs()
    with pytest.raises(ValueError, match="x must have shape"):
        net(torch.randn(4, 3, 16, 8), t, y)  # non-square
    with pytest.raises(ValueError, match="x must have shape"):
        net(torch.randn(4, 1, 16, 16), t, y)
    with pytest.raises(ValueError, match="t must have shape"):
        net(x, t[:2], y)
    with pytest.raises(ValueError, match="batch size"):
        net(x, t, y[:2])
    with pytest.raises(ValueError, match=r"\(B, 3\) or \(B, 4\)"):
        net(x, t, torch.rand(4, NUM_CLASSES + 2))
    with pytest.raises(ValueError, match="integer class ids"):
        net(x, t, torch.rand(4))
    with pytest.raises(ValueError, match="integer class ids"):
        net(x, t, torch.ones(4, NUM_CLASSES, dtype=torch.long))


def test_scalar_and_float_timesteps(net: UNet) -> None:
    x, _, y = inputs()
    t = torch.full((4,), 17)
    ref = net(x, t, y)
    torch.testing.assert_close(net(x, torch.tensor(17), y), ref)
    torch.testing.assert_close(net(x, t.float(), y), ref)


def test_class_ids_match_one_hot(net: UNet) -> None:
    x, t, _ = inputs()
    for k in range(NUM_CLASSES):
        ids = torch.full((4,), k)
        one_hot = F.one_hot(ids, NUM_CLASSES).float()
        torch.testing.assert_close(net(x, t, ids), net(x, t, one_hot))


def test_null_class_and_out_of_range_ids(net: UNet) -> None:
    x, t, _ = inputs()
    null = torch.full((4,), NUM_CLASSES)
    out_null = net(x, t, null)
    assert out_null.shape == x.shape and torch.isfinite(out_null).all()
    assert not torch.allclose(out_null, net(x, t, torch.zeros(4, dtype=torch.long)))
    # A one-hot weight on the extra last column is the null class too (guidance with blends).
    torch.testing.assert_close(net(x, t, F.one_hot(null, NUM_CLASSES + 1).float()), out_null)
    for bad in (NUM_CLASSES + 1, -1):
        with pytest.raises(ValueError, match=f"class ids must be in 0..{NUM_CLASSES}"):
            net(x, t, torch.tensor([0, 1, bad, 2]))


def test_blended_weights_are_weighted_sum(net: UNet) -> None:
    w = torch.tensor([[0.25, 0.75, 0.0], [0.5, 0.2, 0.3], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    rows = net.class_embedding(torch.arange(NUM_CLASSES))  # (K, E)
    expected = (w[:, :, None] * rows[None]).sum(1)  # (4, E)
    torch.testing.assert_close(net.class_embedding(w), expected)
    # A blend of one class with itself is that class; all-zero weights give a zero embedding.
    assert torch.count_nonzero(net.class_embedding(w)[3]) == 0
    x, t, _ = inputs()
    half = torch.tensor([[0.5, 0.5, 0.0]] * 4)
    assert net(x, t, half).shape == x.shape


def test_sinusoidal_embedding() -> None:
    t = torch.tensor([0, 1, 999])
    e = sinusoidal_embedding(t, 8)
    assert e.shape == (3, 8) and e.dtype == torch.float32
    torch.testing.assert_close(e[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    torch.testing.assert_close(e[1, 0], torch.sin(torch.tensor(1.0)))  # frequency 1 first
    torch.testing.assert_close(e[2, 3], torch.sin(torch.tensor(999 * 10000 ** (-3 / 4))))
    assert sinusoidal_embedding(t.half(), 7).shape == (3, 7)


def test_attention_layers_names() -> None:
    m = UNet(**tiny_kwargs(image_size=32, channel_mult=[1, 2, 2], attn_resolutions=[16, 8]))
    layers = m.attention_layers()
    assert layers == {  # named by resolution, in execution order
        "enc.16x16_block0.attn": 16,
        "enc.8x8_block0.attn": 8,
        "mid.8x8_in0.attn": 8,
        "dec.8x8_block0.attn": 8,
        "dec.8x8_block1.attn": 8,
        "dec.16x16_block0.attn": 16,
        "dec.16x16_block1.attn": 16,
    }
    modules = dict(m.named_modules())
    assert all(name in modules for name in layers)
    no_mid = UNet(**tiny_kwargs(image_size=32, channel_mult=[1, 2, 2], attn_resolutions=[32]))
    assert list(no_mid.attention_layers()) == [
        "enc.32x32_block0.attn",
        "dec.32x32_block0.attn",
        "dec.32x32_block1.attn",
    ]
    assert UNet(**tiny_kwargs(attn_resolutions=[])).attention_layers() == {}


def test_capture_attention(net: UNet) -> None:
    x, t, y = inputs()
    ref = net(x, t, y)
    with net.capture_attention() as maps:
        out = net(x, t, y)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert list(maps) == list(net.attention_layers())
    for name, res in net.attention_layers().items():
        w = maps[name]
        assert w.shape == (4, 2, res * res, res * res)
        torch.testing.assert_close(w.sum(-1), torch.ones(4, 2, res * res))
        assert not w.requires_grad
    # Outside the context no capture happens and SDPA runs again.
    assert all(block.capture is None for block in net._attn_blocks.values())
    net(x, t, y)
    assert len(maps) == len(net.attention_layers())


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_grad_checkpoint_same_gradients(dropout: float, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def counting_checkpoint(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(unet_module, "checkpoint", counting_checkpoint)
    x, t, y = inputs()
    grads, outs = [], []
    for ckpt in (False, True):
        torch.manual_seed(0)
        m = randomize_(UNet(**tiny_kwargs(dropout=dropout, grad_checkpoint=ckpt))).train()
        torch.manual_seed(1)  # same dropout masks in both runs
        out = m(x, t, y)
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
        assert bool(calls) == ckpt  # ResBlocks + attention blocks are checkpointed
        if ckpt:
            assert len(calls) == 3 + 3 + 6  # down: 2 res + 1 attn, mid: 3, up: 4 res + 2 attn
            assert all(kw["use_reentrant"] is False for kw in calls)
            calls.clear()
            with torch.no_grad():
                m(x, t, y)
            m.eval()(x, t, y)
            assert not calls  # only while training with grad enabled
    torch.testing.assert_close(outs[0], outs[1])
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], msg=f"gradient mismatch in {n}")
    assert any(g.abs().sum() > 0 for g in grads[1].values())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(image_size=18, channel_mult=[1, 2, 2]), r"not divisible by 4.*sizes that work: 4, 8"),
        (dict(attn_resolutions=[4]), r"\[4\] do not occur.*resolutions are \[16, 8\]"),
        (dict(num_classes=0), "num_classes must be >= 1"),
        (dict(channel_mult=[]), "channel_mult"),
        (dict(attn_heads=3), "attn_heads=3"),
        (dict(base_channels=12, groups=8), "groups do not divide 12 channels"),
        (dict(dropout=1.0), "dropout"),
    ],
)
def test_invalid_configs_raise(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        UNet(**tiny_kwargs(**kwargs))


def test_hydra_instantiate_with_listconfig() -> None:
    hydra_utils = pytest.importorskip("hydra.utils")
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({"_target_": "facediff.models.unet.UNet", **tiny_kwargs()})
    m = hydra_utils.instantiate(cfg)
    assert isinstance(m, UNet) and m.config.channel_mult == [1, 2]
    assert type(m.config.attn_resolutions) is list


def test_autocast_bf16(net: UNet) -> None:
    x, t, y = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, t, y)
        with net.capture_attention() as maps:
            out2 = net(x, t, y)
    assert out.shape == x.shape and torch.isfinite(out).all() and torch.isfinite(out2).all()
    assert all(w.dtype == torch.float32 for w in maps.values())
