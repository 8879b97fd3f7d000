"""module.channels_last and module.compile: training, EMA, checkpoints, resume and sampling."""

from __future__ import annotations

from pathlib import Path

import torch

from facediff.checkpoint import load_checkpoint
from facediff.inference.generator import Generator
from facediff.lightning.training import run


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
