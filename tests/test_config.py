"""Every config group option composes, and the model configs build the networks they promise."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from facediff.data.build import build_datamodule
from facediff.hardware import cpu_choice
from facediff.lightning.loggers import build_logger
from facediff.lightning.training import build_trainer, resolve_precision
from facediff.models.registry import build_model

CONF = Path(__file__).parents[1] / "conf"
GROUPS = ["data", "model", "diffusion", "trainer", "callbacks", "logger", "experiment", "debug"]


# Options that read Hydra's runtime config (`${hydra:launcher...}`): trainer=ddp_slurm composes
# with hydra/launcher=slurm inside a Hydra app, tested in test_scaleout.py.
NEEDS_HYDRA_RUNTIME = {"trainer=ddp_slurm"}


def options(group: str) -> list[str]:
    return sorted(
        p.stem
        for p in (CONF / group).glob("*.yaml")
        if f"{group}={p.stem}" not in NEEDS_HYDRA_RUNTIME
    )


@pytest.mark.parametrize(
    "override",
    [f"{g}={o}" for g in GROUPS for o in options(g)]
    + [f"data/labels={o}" for o in options("data/labels")],
)
def test_every_group_option_composes(compose_cfg, override, monkeypatch):
    """Each option composes, and its trainer, logger and callbacks instantiate (as train.py
    builds them), its data module and network build."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    extra = []
    gpu_options = ("trainer=gpu", "trainer=ddp", "experiment=utkface64")
    if override in gpu_options and not torch.cuda.is_available():
        devices = 2 if override == "trainer=ddp" else 1
        # fp16 autocast needs a GPU
        extra += ["trainer.accelerator=cpu", f"trainer.devices={devices}", "trainer.precision=32"]
    if override == "data/labels=custom":  # an empty template: the user names the classes
        extra.append("+data.classes={white: 0, asian: 2}")  # as the README shows
    cfg = compose_cfg(override, *extra)
    assert cfg.paths.output_dir  # resolves outside @hydra.main too (tests set it)
    assert cfg.data.image_size > 0 and cfg.trainer.max_epochs != 0
    trainer = build_trainer(cfg)
    targets = {c["_target_"].rsplit(".", 1)[1] for c in (cfg.get("callbacks") or {}).values() if c}
    assert targets <= {type(c).__name__ for c in trainer.callbacks}
    logger = build_logger(cfg.get("logger"))  # (fast_dev_run swaps the trainer's for a dummy)
    if cfg.get("logger") is None:
        assert logger is False and trainer.loggers == []
    else:
        assert type(logger).__name__ == cfg.logger._target_.rsplit(".", 1)[1]
    dm = build_datamodule(OmegaConf.to_container(cfg.data, resolve=True))
    assert dm.image_size == cfg.data.image_size
    size = 32 if override == "model=unet_tiny" else cfg.data.image_size  # tiny: 32 px (demo)
    build_model(cfg.model, image_size=size, num_classes=3)


def test_defaults_reproduce_the_original_recipe(compose_cfg):
    cfg = compose_cfg()
    assert cfg.optim.optimizer.lr == 2e-4
    assert cfg.data.batch_size == 10 and cfg.data.image_size == 64
    assert cfg.diffusion.num_steps == 500 and cfg.trainer.max_epochs == 200
    assert cfg.trainer.gradient_clip_val == 1.0
    assert cfg.callbacks.ema.decay == 0.995 and cfg.callbacks.ema.start_step == 2000
    assert cfg.module.p_uncond == 0.1
    assert dict(cfg.data.classes) == {"european": 0, "indian": 3, "oriental": 2}


@pytest.mark.parametrize(
    "model, size, lo, hi",
    [("unet_attn", 64, 20e6, 30e6), ("unet", 64, 15e6, 30e6), ("unet_tiny", 32, 0.5e6, 2e6)],
)
def test_model_configs_build(compose_cfg, model, size, lo, hi):
    cfg = compose_cfg(f"model={model}")
    net = build_model(cfg.model, image_size=size, num_classes=3)
    assert lo < sum(p.numel() for p in net.parameters()) < hi
    has_attention = bool(net.attention_layers())
    assert has_attention == (model != "unet")


def test_auto_precision():
    # this CPU's decision, its probe included (bf16-mixed only with AMX / AVX512-BF16 and a
    # faster probe step; on a busy host the probe may choose fp32)
    on_cpu = cpu_choice()[0]
    assert resolve_precision("auto", "cpu") == on_cpu
    assert resolve_precision("auto", "gpu") == "16-mixed"
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    expected = "16-mixed" if torch.cuda.is_available() else on_cpu
    assert resolve_precision("auto", "auto") == expected


def test_compile_on_a_cpu_keeps_fp32():
    """torch's CPU inductor gives NaN gradients in bf16 (BENCHMARKS.md run 24): auto picks fp32
    and an explicit 16-bit precision is refused, naming the fix; a GPU is unaffected."""
    assert resolve_precision("auto", "cpu", compile=True) == "32-true"
    assert resolve_precision("32-true", "cpu", compile=True) == "32-true"
    assert resolve_precision("auto", "gpu", compile=True) == "16-mixed"
    assert resolve_precision("bf16-mixed", "gpu", compile=True) == "bf16-mixed"
    fix = r"module\.compile=false, or trainer\.precision=32-true"
    assert resolve_precision(None, "cpu", compile=True) is None  # Lightning's default: fp32
    for low in ("bf16-mixed", "16-mixed", "bf16-true", "16", 16, "bf16"):
        with pytest.raises(ValueError, match=fix):
            resolve_precision(low, "cpu", compile=True)
