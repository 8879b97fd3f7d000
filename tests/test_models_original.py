"""model=original: the original project's network, pinned (parameter count, layer layout)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from facediff.models.original import OriginalUNet

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def net64() -> OriginalUNet:
    torch.manual_seed(0)
    return OriginalUNet(image_size=64, num_classes=NUM_CLASSES).eval()


def test_parameter_count(net64: OriginalUNet) -> None:
    # The original with 3 classes had 23,333,507 parameters; one more embedding row (the null
    # class) adds time_dim = 256.
    assert net64.num_parameters() == 23_333_507 + 256


def test_layer_layout(net64: OriginalUNet) -> None:
    shapes = {name: tuple(p.shape) for name, p in net64.named_parameters()}
    expected = {
        "inc.double_conv.0.weight": (64, 3, 3, 3),
        "inc.double_conv.1.weight": (64,),
        "inc.double_conv.3.weight": (64, 64, 3, 3),
        "down1.maxpool_conv.1.double_conv.0.weight": (64, 64, 3, 3),
        "down1.maxpool_conv.2.double_conv.3.weight": (128, 128, 3, 3),
        "down1.emb_layer.1.weight": (128, 256),
        "sa1.mha.in_proj_weight": (384, 128),
        "sa1.mha.out_proj.weight": (128, 128),
        "sa1.ln.weight": (128,),
        "sa1.ff_self.0.weight": (128,),
        "sa1.ff_self.1.weight": (128, 128),
        "sa1.ff_self.3.weight": (128, 128),
        "down3.maxpool_conv.2.double_conv.0.weight": (256, 256, 3, 3),
        "sa3.mha.in_proj_weight": (768, 256),
        "bot1.double_conv.0.weight": (512, 256, 3, 3),
        "bot2.double_conv.3.weight": (512, 512, 3, 3),
        "bot3.double_conv.0.weight": (256, 512, 3, 3),
        "bot3.double_conv.3.weight": (256, 256, 3, 3),
        "up1.conv.0.double_conv.0.weight": (512, 512, 3, 3),
        "up1.conv.1.double_conv.0.weight": (256, 512, 3, 3),
        "up1.conv.1.double_conv.3.weight": (128, 256, 3, 3),
        "up2.conv.1.double_conv.0.weight": (128, 256, 3, 3),
        "up3.conv.1.double_conv.3.weight": (64, 64, 3, 3),
        "up3.emb_layer.1.weight": (64, 256),
        "sa6.mha.in_proj_weight": (192, 64),
        "outc.weight": (3, 64, 1, 1),
        "outc.bias": (3,),
        "label_emb.weight": (NUM_CLASSES + 1, 256),
    }
    for name, shape in expected.items():
        assert shapes[name] == shape, name
    assert not any(
        n.endswith("double_conv.0.bias") or n.endswith("double_conv.3.bias") for n in shapes
    )
    top = list(dict.fromkeys(n.split(".")[0] for n in shapes))
    assert top == [
        "inc", "down1", "sa1", "down2", "sa2", "down3", "sa3", "bot1", "bot2", "bot3",
        "up1", "sa4", "up2", "sa5", "up3", "sa6", "outc", "label_emb",
    ]  # fmt: skip
    assert net64.attention_layers() == {
        "sa1": 32, "sa2": 16, "sa3": 8, "sa4": 16, "sa5": 32, "sa6": 64,
    }  # fmt: skip
    assert net64.sa1.mha.num_heads == 4
    assert isinstance(net64.inc.double_conv[1], torch.nn.GroupNorm)
    assert net64.inc.double_conv[1].num_groups == 1


def test_forward_shapes_and_class_weights() -> None:
    torch.manual_seed(0)
    net = OriginalUNet(image_size=16, num_classes=NUM_CLASSES).eval()
    x, t = torch.randn(4, 3, 16, 16), torch.tensor([0, 10, 100, 499])
    ids = torch.tensor([0, 1, 2, NUM_CLASSES])
    out = net(x, t, ids)
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(net(x, t.float(), ids), out)
    torch.testing.assert_close(net(x, torch.tensor(7), ids), net(x, torch.full((4,), 7), ids))
    one_hot = F.one_hot(ids, NUM_CLASSES + 1).float()
    torch.testing.assert_close(net(x, t, one_hot), out, rtol=1e-5, atol=1e-5)
    blend = torch.tensor([[0.5, 0.5, 0.0]] * 4)
    rows = net.label_emb.weight
    torch.testing.assert_close(net.class_embedding(blend)[0], 0.5 * rows[0] + 0.5 * rows[1])
    with pytest.raises(ValueError, match="class ids"):
        net(x, t, torch.tensor([0, 1, 2, NUM_CLASSES + 1]))
    with pytest.raises(ValueError, match="x must have shape"):
        net(torch.randn(4, 3, 8, 8), t, ids)


def test_capture_attention_and_fused_path_agree() -> None:
    torch.manual_seed(0)
    net = OriginalUNet(image_size=16, num_classes=NUM_CLASSES).eval()
    fused = OriginalUNet(image_size=16, num_classes=NUM_CLASSES, need_weights=False).eval()
    fused.load_state_dict(net.state_dict())
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([3, 300]), torch.tensor([0, 2])
    with net.capture_attention() as maps:
        out = net(x, t, y)
    torch.testing.assert_close(fused(x, t, y), out, rtol=1e-4, atol=1e-5)
    assert list(maps) == list(net.attention_layers())
    for name, res in net.attention_layers().items():
        assert maps[name].shape == (2, 4, res * res, res * res)
        torch.testing.assert_close(maps[name].sum(-1), torch.ones(2, 4, res * res))
    assert all(b.capture is None for b in net._attn_blocks.values())


def test_grad_checkpoint_same_gradients() -> None:
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([3, 300]), torch.tensor([0, 2])
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        net = OriginalUNet(16, NUM_CLASSES, input_dropout=0.0, grad_checkpoint=ckpt).train()
        net(x, t, y).square().mean().backward()
        grads.append({n: p.grad for n, p in net.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, msg=name)


def test_trains_a_step_through_the_lightning_module(compose_cfg) -> None:
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from facediff.lightning.training import build_module

    cfg = compose_cfg("model=original", "data.image_size=16")  # the config group -> this class
    module = build_module(cfg, ["a", "b", "c"])
    assert isinstance(module.net, OriginalUNet) and module.net.num_classes == NUM_CLASSES
    data = TensorDataset(torch.rand(4, 3, 16, 16) * 2 - 1, torch.tensor([0, 1, 2, 0]))
    before = {n: p.detach().clone() for n, p in module.net.named_parameters()}
    trainer = L.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=4))
    assert trainer.global_step == 1
    changed = [n for n, p in module.net.named_parameters() if not torch.equal(p, before[n])]
    assert "outc.weight" in changed and "sa6.mha.in_proj_weight" in changed
