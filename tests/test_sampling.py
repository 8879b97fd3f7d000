"""The Generator API and sample.py on a tiny trained checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from facediff.checkpoint import CheckpointError
from facediff.inference.generator import Generator
from facediff.jobs.sample import run

ROOT = Path(__file__).parents[1]
CLASSES = ["glasses", "hat", "beard"]


@pytest.fixture(scope="module")
def gen(tiny_checkpoint):
    return Generator.from_checkpoint(tiny_checkpoint, device="cpu")


def sample_cfg(ckpt, out, *overrides):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("sample", overrides=[f"ckpt={ckpt}", f"out={out}", *overrides])


def test_loads_the_ema_weights_and_metadata(gen, tiny_checkpoint):
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    assert gen.class_names == CLASSES and gen.image_size == 16
    assert gen.meta["weights"] == "ema"
    ema = ckpt["state_dict"]["net.input_conv.weight"]
    raw = ckpt["current_model_state"]["net.input_conv.weight"]
    assert not torch.equal(ema, raw)
    torch.testing.assert_close(gen.net.input_conv.weight, ema)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp"])
def test_same_seed_same_images_whatever_the_batch_size(gen, sampler):
    kw = {
        "sampler": sampler,
        "steps": 6,
        "guidance": 2.0,
        "eta": 1.0,
        "seed": 3,
        "spacing": "trailing",
    }
    whole, labels = gen.sample(n_per_class=3, batch_size=9, **kw)
    split, _ = gen.sample(n_per_class=3, batch_size=2, **kw)
    assert labels == [c for c in CLASSES for _ in range(3)]
    assert whole.shape == (9, 3, 16, 16) and whole.min() >= 0 and whole.max() <= 1
    torch.testing.assert_close(whole, split, atol=1e-4, rtol=1e-4)
    other, _ = gen.sample(n_per_class=3, batch_size=9, **{**kw, "seed": 4})
    assert not torch.allclose(whole, other)


def test_bf16_precision_runs_the_network_in_bf16_and_draws_the_same_images(gen):
    """precision=bf16: autocast for the network only (its convolutions see bf16, in
    channels_last on a CPU: sampling.network_layout), the sampler's arithmetic and the images
    stay fp32 and close to fp32 sampling (contiguous) from the same noise."""
    seen = []

    def record(module: torch.nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        seen.append((out.dtype, inputs[0].is_contiguous(memory_format=torch.channels_last)))

    hook = gen.net.input_conv.register_forward_hook(record)
    kw = {"sampler": "dpmpp", "steps": 6, "guidance": 2.0, "seed": 3}
    try:
        low, _ = gen.sample(n_per_class=2, precision="bf16", **kw)
        assert set(seen) == {(torch.bfloat16, True)}
        seen.clear()
        full, _ = gen.sample(n_per_class=2, precision="fp32", **kw)
        assert set(seen) == {(torch.float32, False)}
    finally:
        hook.remove()
    assert low.dtype == torch.float32 and low.is_contiguous()
    assert (low - full).abs().mean() < 0.02  # 1/50 of the [0, 1] range, on average


@pytest.mark.parametrize("flags", ["amx_bf16", "avx2"])
def test_auto_precision_is_recorded_as_the_precision_that_ran(gen, monkeypatch, flags):
    """precision "auto": the network runs in what the machine's rule chose, and Generator.settings
    records that precision (samples.json, evaluate.py's report), never "auto"."""
    import facediff.hardware as hardware

    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset([flags]))
    monkeypatch.setattr(hardware, "autocast_probe", lambda: (0.010, 0.004))
    for decided in (hardware.cpu_choice, hardware.auto_sampling_precision):
        decided.cache_clear()
    seen = []
    hook = gen.net.input_conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        recorded = gen.settings(precision="auto").precision
        gen.sample(n_per_class=1, precision="auto", steps=2)
    finally:
        hook.remove()
        for decided in (hardware.cpu_choice, hardware.auto_sampling_precision):
            decided.cache_clear()
    expected = "bf16" if flags == "amx_bf16" else "fp32"
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[expected]
    assert recorded == expected and set(seen) == {dtype}
    assert gen.settings(precision="fp32").precision == "fp32"


def test_blends(gen):
    w = gen.blend_weights({"glasses": 1, "beard": 3})
    torch.testing.assert_close(w, torch.tensor([0.25, 0.0, 0.75]))
    kw = {"sampler": "ddim", "steps": 5, "seed": 1}
    pure, _ = gen.sample(["hat"], 2, **kw)
    as_blend, labels = gen.sample(n_per_class=2, blend={"hat": 1.0}, **kw)
    torch.testing.assert_close(as_blend, pure, atol=1e-5, rtol=1e-5)
    assert labels == ["hat 1.00"] * 2
    sweep, alphas = gen.blend_sweep("glasses", "beard", n_steps=4, n_seeds=2, **kw)
    assert sweep.shape == (2, 4, 3, 16, 16) and alphas == [
        0.0,
        pytest.approx(1 / 3),
        pytest.approx(2 / 3),
        1.0,
    ]
    start, _ = gen.sample(["glasses"], 2, **kw)
    end, _ = gen.sample(["beard"], 2, **kw)
    torch.testing.assert_close(sweep[:, 0], start, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sweep[:, -1], end, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["classes=[glasses,wizard]"], r"Unknown class 'wizard'; this model knows \['glasses'"),
        (["steps=0"], "steps=0: must be an integer >= 1"),
        (["steps=501"], r"steps must be in 1\.\.500"),
        (["guidance=-1"], "guidance=-1: must be a finite number >= 0"),
        (["sampler=euler", "n_per_class=0"], "sampler='euler'.*\n.*n_per_class=0"),
        (["precision=int8"], "precision='int8': must be one of"),
        (["ckpt=???"], "ckpt='\\?\\?\\?': is required"),
        (["blend={glasses: -0.5, hat: 1.0}"], "Blend weights must be >= 0"),
        (["blend={glasses: 0.5, wizard: 0.5}"], "Unknown class 'wizard'"),
        (["sweep={start: hat, end: wizard, n_steps: 3, n_seeds: 1}"], "Unknown class 'wizard'"),
    ],
)
def test_bad_input_fails_before_any_work(tiny_checkpoint, tmp_path, overrides, match):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        run(sample_cfg(tiny_checkpoint, out, *overrides))
    assert not out.exists()


def test_bad_checkpoints(tiny_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Generator.from_checkpoint(tmp_path / "nope.ckpt")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, foreign)
    with pytest.raises(CheckpointError, match="not a facediff checkpoint"):
        Generator.from_checkpoint(foreign)
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ckpt["hyper_parameters"]["model"]["base_channels"] = 48  # weights of another model
    ckpt["facediff"]["model"]["base_channels"] = 48  # (the full config sampling rebuilds from)
    other = tmp_path / "other.ckpt"
    torch.save(ckpt, other)
    with pytest.raises(CheckpointError, match="do not fit the model"):
        Generator.from_checkpoint(other)


def test_sample_py_writes_the_documented_layout(tiny_checkpoint, tmp_path):
    out = tmp_path / "samples"
    cmd = [
        sys.executable,
        "sample.py",
        f"ckpt={tiny_checkpoint}",
        f"out={out}",
        "n_per_class=2",
        "steps=4",
        "device=cpu",
        "blend={glasses: 0.5, beard: 0.5}",
        "sweep={start: glasses, end: beard, n_steps: 3, n_seeds: 2}",
        "denoising={n_frames: 3}",
        "attention={queries: [[0.5, 0.5]]}",
    ]
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((out / "samples.json").read_text())
    assert meta["sampler"] == "dpmpp" and meta["steps"] == 4 and meta["seed"] == 0
    assert meta["checkpoint"] == str(tiny_checkpoint) and meta["weights"] == "ema"
    files = {f["file"]: f["class"] for f in meta["files"]}
    assert len(files) == 8 and files["hat/0001.png"] == "hat" and files["blend/0000.png"] == "blend"
    for name in [
        *files,
        "grid.png",
        "sweep.png",
        "denoising.png",
        "denoising.gif",
        "attention_hat.png",
    ]:
        assert (out / name).is_file(), name
