"""Issue 11: one sampling config, one model config, the layers, and what follows from them."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from torch import nn

from facediff.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from facediff.diffusion.settings import DEFAULTS_FILE, SamplingSettings
from facediff.inference.generator import Generator
from facediff.lightning.callbacks import SampleGrid
from facediff.lightning.optim import parameter_groups
from facediff.lightning.training import build_trainer, run
from facediff.models.unet import UNet, UNetConfig

ROOT = Path(__file__).parents[1]


def compose_job(name: str, *overrides: str):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose(name, overrides=["ckpt=x", "out=y", *overrides])


def test_every_entry_point_composes_the_one_sampling_node(compose_cfg):
    defaults = SamplingSettings.defaults()
    assert DEFAULTS_FILE == ROOT / "conf" / "sampling" / "default.yaml"
    train = compose_cfg("logger=none")
    nodes = {
        "sample.py": compose_job("sample"),
        "evaluate.py": compose_job("evaluate"),
        "sample_grid": train.callbacks.sample_grid.sampling,
        "eval_metrics": train.callbacks.eval_metrics.sampling,
    }
    for where, node in nodes.items():
        assert SamplingSettings.from_config(node) == defaults, where
    grid = build_trainer(train).callbacks
    built = [c.sampling for c in grid if hasattr(c, "sampling")]
    assert len(built) == 2 and all(s == defaults for s in built)
    # The keys users type stay where they were.
    assert compose_job("sample", "steps=7").steps == 7
    assert (
        compose_cfg("callbacks.sample_grid.sampling.sampler=ddpm").callbacks.sample_grid[
            "sampling"
        ]["sampler"]
        == "ddpm"
    )


@pytest.mark.parametrize(
    "change, match",
    [
        ({"sampler": "euler"}, "Unknown sampler 'euler'"),
        ({"spacing": "leading"}, "Unknown spacing 'leading'"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"steps": 2.5}, "steps must be an integer"),
        ({"eta": -0.1}, "eta must be >= 0"),
        ({"guidance": math.nan}, "guidance must be finite"),
    ],
)
def test_sampling_settings_are_validated_once(change, match):
    with pytest.raises(ValueError, match=match):
        SamplingSettings.defaults().replace(**change)
    with pytest.raises(ValueError, match=r"steps must be in 1\.\.10"):
        SamplingSettings.defaults().replace(steps=11).check_steps(10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        SamplingSettings.defaults().steps = 3  # type: ignore[misc]


def test_training_callbacks_refuse_bad_sampling_when_the_run_starts(tiny_cfg):
    with pytest.raises(InstantiationException, match=r"sample_grid\.sampling: Unknown sampler"):
        build_trainer(tiny_cfg("callbacks.sample_grid.sampling.sampler=euler"))
    cfg = tiny_cfg("callbacks.sample_grid.sampling.steps=501", "trainer.max_epochs=5")
    with pytest.raises(ValueError, match=r"sample_grid\.sampling\.steps=501: must be in 1\.\.500"):
        run(cfg)  # facediff.config_checks, before the data is read
    assert not list(Path(cfg.paths.output_dir).rglob("*.ckpt"))  # before any epoch
    with pytest.raises(ValueError, match=r"sample_grid\.sampling: Sampling settings lack"):
        SampleGrid(  # incomplete: no default of its own
            sampling={"sampler": "dpmpp"}, every_n_epochs=1, n_per_class=1,
            denoising_frames=None, attention=False,
        )  # fmt: skip


def test_unet_config_is_the_single_source_and_the_checkpoint_rebuilds_from_it(tiny_checkpoint):
    cfg = UNetConfig(image_size=16, num_classes=3, base_channels=16, channel_mult=[1, 2],
                     num_res_blocks=1, attn_resolutions=[8, 16, 8], attn_heads=2, dropout=0.0,
                     grad_checkpoint=False, groups=8)  # fmt: skip
    assert cfg.attn_resolutions == [16, 8] and cfg.emb_channels == 64
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.base_channels = 8  # type: ignore[misc]
    assert UNet(cfg).config is cfg and UNet(**cfg.to_dict()).config == cfg
    ckpt = load_checkpoint(tiny_checkpoint)
    assert ckpt["facediff"]["format"] == CHECKPOINT_FORMAT
    stored = dict(ckpt["facediff"]["model"])
    assert stored.pop("name") == "unet"
    gen = Generator.from_checkpoint(tiny_checkpoint, device="cpu")
    assert gen.net.config == UNetConfig(**stored)


def _format1_key(key: str, size: int) -> str:
    """The name the level-indexed UNet (checkpoint format 1) gave a parameter."""
    side, block, rest = key.split(".", 2)
    if side == "mid":
        part = block.split("_")[1] + "." + rest.split(".")[0]
        old = {"in0.res": "res0", "in0.attn": "attn", "in1.res": "res1"}[part]
        return f"mid.{old}.{rest.split('.', 1)[1]}"
    res, what = block.split("_")
    level = int(math.log2(size // int(res.split("x")[0])))
    part = "down" if side == "enc" else "up"
    if what in ("down", "up"):
        level += -1 if what == "down" else 1
        return f"{part}.{level}.resample.{rest}"
    kind, tail = rest.split(".", 1)
    return f"{part}.{level}.{kind}.{what.removeprefix('block')}.{tail}"


def test_format1_checkpoints_still_load(tiny_checkpoint, tmp_path):
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    size = ckpt["hyper_parameters"]["image_size"]
    for key in ("state_dict", "current_model_state"):
        ckpt[key] = {
            ("net." + _format1_key(k[4:], size))
            if k.startswith(("net.enc.", "net.mid.", "net.dec."))
            else k: v
            for k, v in ckpt[key].items()
        }
    assert "net.down.0.res.0.conv1.weight" in ckpt["state_dict"]
    ckpt["facediff"] = {"format": 1, "class_names": ckpt["facediff"]["class_names"]}
    ckpt["hyper_parameters"]["model"] = {  # format 1 left out what took the UNet's defaults
        "_target_": "facediff.models.unet.UNet",
        **{k: v for k, v in ckpt["hyper_parameters"]["model"].items()
           if k not in ("name", "grad_checkpoint")},
    }  # fmt: skip
    torch.save(ckpt, tmp_path / "old.ckpt")
    old = Generator.from_checkpoint(tmp_path / "old.ckpt", device="cpu")
    new = Generator.from_checkpoint(tiny_checkpoint, device="cpu")
    kw = {"steps": 3, "seed": 1, "n_per_class": 1}
    torch.testing.assert_close(old.sample(**kw)[0], new.sample(**kw)[0])


def test_norms_biases_and_embeddings_are_not_weight_decayed():
    net = UNet(image_size=16, num_classes=3, base_channels=16, channel_mult=[1, 2],
               num_res_blocks=2, attn_resolutions=[8], attn_heads=4, dropout=0.1,
               grad_checkpoint=False, groups=8)  # fmt: skip
    decay, no_decay = parameter_groups(net)
    assert no_decay["weight_decay"] == 0.0 and "weight_decay" not in decay
    ids = {id(p) for p in no_decay["params"]}
    for name, module in net.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            expect = isinstance(module, (nn.GroupNorm, nn.Embedding)) or pname == "bias"
            assert (id(p) in ids) == expect, f"{name}.{pname}"
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(net.parameters()))
    opt = torch.optim.AdamW(parameter_groups(net), lr=1e-3, weight_decay=0.1)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_the_generator_does_not_import_lightning():
    code = (
        "import sys, facediff.inference.generator, facediff.inference.model_figures\n"
        "bad = [m for m in sys.modules if m == 'lightning' or m.startswith('lightning.')]\n"
        "assert not bad, bad[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=300)
