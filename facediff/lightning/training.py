"""`run(cfg)`: one training run from a composed Hydra config (what train.py calls)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from torch import nn

from facediff.checkpoint import check_resumable
from facediff.config_checks import check_train_config
from facediff.data.build import build_datamodule
from facediff.hardware import cpu_choice, cpu_model
from facediff.lightning.checkpoint_io import AtomicCheckpointIO
from facediff.lightning.distributed import launched_as_rank_zero, refuse_relaunch_in_multirun
from facediff.lightning.loggers import build_logger, config_for_logging, finish_loggers
from facediff.lightning.module import DiffusionModule
from facediff.lightning.out_of_memory import explain_out_of_memory
from facediff.lightning.preemption import Preempted, as_preempted, resume_command
from facediff.lightning.resume import resolve_ckpt_path
from facediff.lightning.sweeps import in_multirun, objective_value
from facediff.models.group_norm import fast_in_channels_last

log = logging.getLogger(__name__)


def resolve_precision(precision: Any, accelerator: str, compile: bool = False) -> Any:
    """`auto`: 16-bit mixed precision on a GPU; on a CPU bf16-mixed where it has native bf16
    matrix units (AMX or AVX512-BF16) and a probe step measures bf16 faster, fp32 elsewhere
    (facediff.hardware; BENCHMARKS.md). The choice and its reason are logged.

    `compile` on a CPU keeps fp32: torch's inductor gives NaN gradients there for a bf16
    GroupNorm -> linear -> residual (every attention block; BENCHMARKS.md run 24), so `auto`
    picks fp32 and an explicit 16-bit precision is refused with the fix."""
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    low_precision = precision not in ("auto", None) and not str(precision).startswith(("32", "64"))
    if compile and on_cpu and low_precision:
        raise ValueError(
            f"module.compile=true with trainer.precision={precision} on a CPU: torch "
            f"{torch.__version__}'s inductor gives NaN gradients for 16-bit GroupNorm -> linear "
            "-> residual (every step would be skipped; BENCHMARKS.md run 24), and compiling buys "
            "no speed on a CPU (run 23). Use module.compile=false, or trainer.precision=32-true "
            "to compile in fp32."
        )
    if precision != "auto":
        return precision
    if on_gpu:
        return "16-mixed"
    if compile:
        log.info(
            "precision auto on CPU with module.compile=true: 32-true, because torch's inductor "
            "gives NaN gradients in bf16 on a CPU (BENCHMARKS.md run 24)"
        )
        return "32-true"
    choice, reason = cpu_choice()  # shared with sampling's auto: one probe, one decision
    log.info("precision auto on CPU (%s): %s, because %s", cpu_model(), choice, reason)
    return choice


def auto_compile(compile: Any, trainer: L.Trainer) -> bool:
    """`module.compile: auto`: compile the training forward where that measured faster, i.e. on
    one CUDA GPU with Triton (2.5x eager's steps/s inside Lightning, utkface64 on an H100,
    BENCHMARKS.md run 24); eager on a CPU (slower compiled, runs 21 and 23, and NaN gradients
    in bf16, run 24) and under DDP (not measured). True/false are the user's; the choice of
    `auto` and its reason are logged."""
    if compile != "auto":
        return False  # an explicit true is compiled by the module itself
    one_gpu = isinstance(trainer.accelerator, CUDAAccelerator) and trainer.num_devices == 1
    if not one_gpu or trainer.num_nodes != 1:
        reason = "it measured faster only on one CUDA GPU (BENCHMARKS.md runs 21, 23, 24)"
        on = False
    elif importlib.util.find_spec("triton") is None:
        reason, on = "Triton, which torch.compile needs on a GPU, is not installed", False
    else:
        reason, on = "one CUDA GPU trained 2.5x faster compiled (BENCHMARKS.md run 24)", True
    log.info("module.compile auto: %s, because %s", "on" if on else "off (eager)", reason)
    return on


def auto_channels_last(channels_last: Any, trainer: L.Trainer, net: nn.Module) -> bool:
    """`module.channels_last: auto`: channels_last where it measured faster, i.e. on a CPU in
    16-bit precision for a network whose every GroupNorm is facediff's (with its channels_last
    path `unet_attn`'s bf16 step ran 1.15x faster than contiguous on a Xeon with AMX,
    BENCHMARKS.md run 28); contiguous in fp32 (slower there for `unet_attn`, run 4),
    on a GPU (20% slower on an H100, run 15) and for `original`, whose torch GroupNorm has a
    slow channels_last backward. True/false are the user's; the choice of `auto` is logged."""
    if channels_last != "auto":
        return channels_last is True
    on_cpu = isinstance(trainer.accelerator, CPUAccelerator)
    sixteen_bit = str(trainer.precision).startswith(("bf16", "16"))
    if not on_cpu:
        reason, on = "channels_last measured slower on a GPU (BENCHMARKS.md run 15)", False
    elif not sixteen_bit:
        reason, on = f"precision {trainer.precision}: it measured faster in 16-bit only", False
    elif not fast_in_channels_last(net):
        reason, on = "this network's GroupNorm is torch's, slow in channels_last", False
    else:
        reason = f"{trainer.precision} on a CPU trained faster so (BENCHMARKS.md run 28)"
        on = True
    log.info("module.channels_last auto: %s, because %s", on, reason)
    return on


def build_module(cfg: DictConfig, class_names: list[str]) -> DiffusionModule:
    """The LightningModule of `cfg`, with plain-container hyper-parameters (checkpoint-safe)."""

    def plain(node: Any) -> Any:
        return OmegaConf.to_container(node, resolve=True)

    return DiffusionModule(
        model=plain(cfg.model),
        diffusion=plain(cfg.diffusion),
        optim=plain(cfg.optim),
        class_names=list(class_names),
        image_size=int(cfg.data.image_size),
        data=plain(cfg.data),
        optimizer=instantiate(cfg.optim.optimizer),  # user config (conf/), never a checkpoint's
        **plain(cfg.module),
    )


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """Trainer with the configured callbacks and logger, writing into `paths.output_dir`."""
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    logger = build_logger(cfg.get("logger"))
    precision = resolve_precision(
        cfg.trainer.precision, str(cfg.trainer.accelerator), cfg.module.compile is True
    )
    return instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=logger,
        precision=precision,
        default_root_dir=cfg.paths.output_dir,
        plugins=[AtomicCheckpointIO()],  # a kill mid-write never corrupts a checkpoint
    )


def run(cfg: DictConfig) -> float | None:
    """Train (and optionally test) as configured; return `cfg.optimized_metric` for sweepers."""
    typed = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    check_train_config(cfg, typed)  # every value a user types, before anything is read or built
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if launched_as_rank_zero():  # one copy, not one per DDP rank
        OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
        log.info("Resolved config saved to %s", out_dir / "config.yaml")

    datamodule = build_datamodule(OmegaConf.to_container(cfg.data, resolve=True))
    module = build_module(cfg, datamodule.class_names)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), out_dir)  # facediff.lightning.resume
    if ckpt_path:
        check_resumable(ckpt_path, dict(module.hparams))
    trainer = build_trainer(cfg)
    module.set_memory_format(auto_channels_last(cfg.module.channels_last, trainer, module.net))
    if auto_compile(cfg.module.compile, trainer):  # CUDA graphs unless a mode is named
        module.compile_training_forward(cfg.module.compile_mode or "reduce-overhead")
    refuse_relaunch_in_multirun(trainer, in_multirun())
    try:
        for logger in trainer.loggers:
            logger.log_hyperparams(config_for_logging(cfg))
        log.info("Classes: %s; schedule: %s", module.class_names, module.schedule)
        with explain_out_of_memory(cfg, trainer):  # saves what it can, names the switches
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
            if cfg.get("test"):
                trainer.test(module, datamodule=datamodule)
        return objective_value(trainer.callback_metrics, cfg.get("optimized_metric"))
    except (Preempted, SIGTERMException) as stop:  # a signal: never exit 0 (preemption.py)
        stopped = as_preempted(stop, trainer.global_step)
        log.error("%s\nResume with: %s", stopped, resume_command(out_dir, cfg.get("run_name")))
        raise stopped from None
    finally:
        finish_loggers(trainer.loggers)
