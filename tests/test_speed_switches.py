"""module.channels_last and module.compile: training, EMA, checkpoints, resume and sampling."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator

from facediff.checkpoint import load_checkpoint
from facediff.inference.generator import Generator
from facediff.lightning.training import auto_compile, run


def test_compiled_channels_last_run_checkpoints_resumes_and_samples(tiny_cfg, monkeypatch):
    # TorchDynamo with its "eager" backend: the same wrapping as inductor's (what the checkpoint,
    # the EMA copy and resume see) without minutes of C++ compilation on a CI CPU.
    compiled, calls = [], []
    plain_compile = torch.compile

    def eager_compile(fn, **kwargs):
        compiled.append(kwargs.get("mode"))
        dynamo_fn = plain_compile(fn, backend="eager")

        def counted(*args):
            calls.append(args[0].shape[0])
            return dynamo_fn(*args)

        return counted

    monkeypatch.setattr(torch, "compile", eager_compile)
    switches = (
        "module.channels_last=true", "module.compile=true", "module.compile_mode=reduce-overhead",
    )  # fmt: skip
    cfg = tiny_cfg("trainer.max_steps=3", "trainer.max_epochs=3", *switches)
    run(cfg)
    assert compiled == ["reduce-overhead"], "module.compile=true did not compile the network"
    # the training steps alone ran the compiled forward: validation and the sample grid ran eager
    assert len(calls) == 3, calls
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(last)
    keys = list(ckpt["state_dict"])
    assert keys and not any("_orig_mod" in k for k in keys), keys[:5]
    assert ckpt["global_step"] == 3
    for name, tensor in ckpt["state_dict"].items():
        assert torch.isfinite(tensor.float()).all(), name

    resumed = tiny_cfg(
        "trainer.max_steps=5",
        "trainer.max_epochs=3",
        f"ckpt_path={last}",
        *switches,
        name="resumed",
    )
    run(resumed)
    again = load_checkpoint(Path(resumed.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert again["global_step"] == 5

    gen = Generator.from_checkpoint(last, device="cpu")  # a plain network, whatever trained it
    images, _ = gen.sample(n_per_class=1, steps=2, seed=0)
    assert images.shape == (3, 3, 16, 16) and torch.isfinite(images).all()


@pytest.mark.parametrize(
    ("accelerator", "devices", "nodes", "triton", "expected", "why"),
    [
        (CUDAAccelerator, 1, 1, True, True, "2.5x faster compiled"),
        (CUDAAccelerator, 1, 1, False, False, "Triton"),
        (CUDAAccelerator, 2, 1, True, False, "only on one CUDA GPU"),  # DDP: not measured
        (CUDAAccelerator, 1, 2, True, False, "only on one CUDA GPU"),
        (CPUAccelerator, 1, 1, True, False, "only on one CUDA GPU"),  # slower, NaN in bf16
    ],
)
def test_compile_auto_follows_the_measurements(
    accelerator, devices, nodes, triton, expected, why, monkeypatch, caplog
):
    """`module.compile: auto` compiles on one CUDA GPU with Triton and nowhere else, and says
    why; an explicit true or false is left to the module and the user."""
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        if name == "triton":
            return object() if triton else None
        return real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    trainer = SimpleNamespace(accelerator=accelerator(), num_devices=devices, num_nodes=nodes)
    with caplog.at_level(logging.INFO, logger="facediff.lightning.training"):
        assert auto_compile("auto", trainer) is expected
    assert "module.compile auto: " + ("on" if expected else "off (eager)") in caplog.text
    assert why in caplog.text
    assert auto_compile(True, trainer) is False and auto_compile(False, trainer) is False


def test_compile_auto_trains_eager_on_a_cpu(tiny_cfg, monkeypatch):
    """The default (`auto`) on a CPU: the network is never handed to torch.compile."""
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled on a CPU"))
    cfg = tiny_cfg("trainer.max_steps=2", "trainer.max_epochs=1", "module.compile=auto")
    run(cfg)


def tiny_net(model: str) -> torch.nn.Module:
    """A small `unet` (facediff's GroupNorm) or `original` (torch's) at 16x16."""
    from facediff.models.registry import build_model

    cfg: dict[str, object] = {"name": model}
    if model == "unet":
        cfg |= dict(base_channels=8, channel_mult=[1, 2], num_res_blocks=1, attn_resolutions=[],
                    attn_heads=1, dropout=0.0, grad_checkpoint=False, groups=4)  # fmt: skip
    else:
        cfg |= dict(need_weights=False, grad_checkpoint=False)
    return build_model(cfg, image_size=16, num_classes=2)


@pytest.mark.parametrize(
    ("accelerator", "precision", "model", "expected", "why"),
    [
        (CPUAccelerator, "bf16-mixed", "unet", True, "trained faster so"),
        (CPUAccelerator, "32-true", "unet", False, "16-bit only"),
        (CPUAccelerator, "bf16-mixed", "original", False, "GroupNorm is torch's"),
        (CUDAAccelerator, "16-mixed", "unet", False, "slower on a GPU"),
    ],
)
def test_channels_last_auto_follows_the_measurements(
    accelerator, precision, model, expected, why, caplog
):
    """`module.channels_last: auto` picks channels_last on a CPU in 16-bit for facediff's
    GroupNorm networks only, and says why; true and false are the user's."""
    from facediff.lightning.training import auto_channels_last

    net = tiny_net(model)
    trainer = SimpleNamespace(accelerator=accelerator(), precision=precision)
    with caplog.at_level(logging.INFO, logger="facediff.lightning.training"):
        assert auto_channels_last("auto", trainer, net) is expected
    assert f"module.channels_last auto: {expected}" in caplog.text and why in caplog.text
    assert auto_channels_last(True, trainer, net) is True
    assert auto_channels_last(False, trainer, net) is False


def test_channels_last_auto_sets_the_layout_a_cpu_run_trains_in(tiny_cfg):
    """In a run: bf16 on a CPU trains the weights in channels_last; fp32 keeps them contiguous
    (the layout the module is finally given, and its weights' layout after training)."""
    from facediff.lightning.module import DiffusionModule

    layouts: dict[str, tuple[bool, bool]] = {}
    real = DiffusionModule.set_memory_format

    for precision in ("bf16-mixed", "32-true"):

        def spy(module, channels_last, precision=precision):
            real(module, channels_last)
            conv = module.net.input_conv.weight
            layouts[precision] = (
                channels_last,
                conv.is_contiguous(memory_format=torch.channels_last),
            )

        overrides = (f"trainer.precision={precision}", "module.channels_last=auto")
        cfg = tiny_cfg("trainer.max_steps=1", "trainer.max_epochs=1", *overrides, name=precision)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(DiffusionModule, "set_memory_format", spy)
            run(cfg)
    assert layouts == {"bf16-mixed": (True, True), "32-true": (False, False)}


@pytest.mark.parametrize("model", ["unet", "original"])
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_sampling_layout_follows_the_same_rule(model, precision):
    """Sampling feeds the network channels_last on a CPU in 16-bit, for facediff's GroupNorm
    networks only (the rule of module.channels_last: auto)."""
    from facediff.diffusion.sampling import network_layout

    net = tiny_net(model)
    cl = model == "unet" and precision == "bf16"
    expected = torch.channels_last if cl else torch.contiguous_format
    assert network_layout(net, precision, torch.device("cpu")) == expected


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_fused_adamw_auto_trains_clipped_and_resumes(tiny_cfg, precision, monkeypatch):
    """`optim.optimizer.fused: auto` on a CPU without a GradScaler: the run's AdamW is fused,
    every step's gradients are still clipped (Lightning's mixed-precision plugin would refuse a
    fused optimizer), and the checkpoint resumes."""
    from lightning.pytorch.plugins.precision import Precision

    clipped = []
    by_norm = Precision.clip_grad_by_norm

    def spy(self, optimizer, clip_val):
        clipped.append(optimizer.param_groups[0]["fused"])
        return by_norm(self, optimizer, clip_val)

    monkeypatch.setattr(Precision, "clip_grad_by_norm", spy)
    steps = ("trainer.max_epochs=3", "trainer.gradient_clip_val=1.0")
    cfg = tiny_cfg("trainer.max_steps=2", f"trainer.precision={precision}", *steps)
    run(cfg)
    assert clipped == [True, True]
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last)["optimizer_states"][0]["param_groups"][0]["fused"] is True
    resumed = tiny_cfg("trainer.max_steps=3", f"trainer.precision={precision}", *steps,
                       f"ckpt_path={last}", name="resumed")  # fmt: skip
    run(resumed)
    assert clipped == [True, True, True]


def test_fused_auto_follows_the_precision_and_the_optimizer(caplog):
    """fused where no GradScaler unscales (fp32, bf16) on a CPU or GPU; not beside foreach or
    under fp16's scaler; left out for an optimizer without the argument; true/false kept."""
    from functools import partial

    from facediff.lightning.optim import resolve_fused

    def trainer(scaler):
        plugin = SimpleNamespace(scaler=scaler)
        return SimpleNamespace(precision_plugin=plugin, precision="x")

    adamw = partial(torch.optim.AdamW, lr=1e-3, fused="auto")
    params = [torch.nn.Parameter(torch.zeros(2))]
    with caplog.at_level(logging.INFO, logger="facediff.lightning.optim"):
        assert resolve_fused(adamw, trainer(None), "cpu")(params).defaults["fused"] is True
    assert "optim.optimizer.fused auto: True" in caplog.text
    assert resolve_fused(adamw, trainer(object()), "cuda").keywords["fused"] is False
    assert resolve_fused(adamw, trainer(None), "mps").keywords["fused"] is False
    with_foreach = partial(torch.optim.AdamW, fused="auto", foreach=True)
    assert resolve_fused(with_foreach, trainer(None), "cpu").keywords["fused"] is False
    fixed = partial(torch.optim.AdamW, fused=False)
    assert resolve_fused(fixed, trainer(None), "cpu") is fixed

    class Plain(torch.optim.SGD):
        def __init__(self, params, lr: float = 0.1) -> None:
            super().__init__(params, lr=lr)

    plain = resolve_fused(partial(Plain, fused="auto"), trainer(None), "cpu")
    assert "fused" not in plain.keywords and isinstance(plain(params), Plain)


def test_clipping_under_a_grad_scaler_stays_lightnings():
    """With fp16's GradScaler the clipping is Lightning's own (which refuses a fused step)."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    from facediff.lightning.optim import clip_gradients

    calls = []
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    module = SimpleNamespace(
        trainer=SimpleNamespace(precision_plugin=plugin),
        clip_gradients=lambda *args: calls.append(args[1:]),
    )
    clip_gradients(module, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))]), 1.0, "norm")
    assert calls == [(1.0, "norm")]
