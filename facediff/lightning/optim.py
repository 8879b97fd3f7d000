"""Optimizer parameter groups and the learning-rate schedule of a training run."""

from __future__ import annotations

import inspect
import logging
import math
from functools import partial
from typing import Any

import lightning as L
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType
from torch import nn
from torch.optim import Optimizer

log = logging.getLogger(__name__)

# Modules whose parameters are scales, offsets or lookup rows, not weights to shrink.
NO_DECAY_MODULES = (nn.Embedding, nn.GroupNorm, nn.LayerNorm, nn.modules.batchnorm._NormBase)


def parameter_groups(net: nn.Module) -> list[dict[str, Any]]:
    """Two optimizer groups: weights (decayed as the optimizer is configured) and norms,
    biases and embeddings (`weight_decay` 0: decaying them pulls gains and class rows to 0)."""
    decay, no_decay, seen = [], [], set()
    for module in net.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if isinstance(module, NO_DECAY_MODULES) or name.endswith("bias") or param.ndim < 2:
                no_decay.append(param)
            else:
                decay.append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warm-up to 1, then cosine decay to `min_lr_ratio` at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def schedule_change(
    step: int, saved_total: int, total: int, warmup_steps: int, min_lr_ratio: float, lr: float
) -> str | None:
    """What a resume does to the learning rate when the run's length changed (None if not).

    The schedule is a function of the step and the run's total steps (trainer.max_steps or
    max_epochs); resuming with another total lays the warm-up and cosine over the new length,
    so the learning rate at the resumed step jumps: a warm restart, not a continuation."""
    if saved_total == total:
        return None
    before = lr * warmup_cosine(step, warmup_steps, saved_total, min_lr_ratio)
    after = lr * warmup_cosine(step, warmup_steps, total, min_lr_ratio)
    return (
        f"Resuming at step {step} a run whose learning-rate schedule spanned {saved_total} "
        f"steps, now {total} (trainer.max_steps or max_epochs changed): the warm-up and cosine "
        f"are laid over {total} steps, so the learning rate goes from {before:.3g} to "
        f"{after:.3g} at this step (a warm restart, not an exact continuation). Resume with the "
        "run's own trainer.max_steps / max_epochs to continue it exactly."
    )


def fused_choice(setting: Any, grad_scaler: bool, device_type: str) -> bool | None:
    """`optim.optimizer.fused: auto`: torch's fused optimizer step (one kernel over all
    parameters) on a CPU or GPU when no GradScaler unscales the gradients, i.e. in fp32 and
    bf16. On the Xeon with AMX fused AdamW took 16 ms a step over `unet_attn`'s 23M parameters
    against 47 ms for torch's default (BENCHMARKS.md run 29). Under fp16's GradScaler the
    default: Lightning clips after unscaling, which a fused step would do inside itself.
    True/false/null are the user's (null: torch's default)."""
    if setting != "auto":
        return setting
    return not grad_scaler and device_type in ("cpu", "cuda")


def resolve_fused(factory: Any, trainer: L.Trainer, device_type: str) -> Any:
    """The optimizer factory (a partial) with `fused: auto` replaced by `fused_choice`'s answer
    for this trainer's precision and device (false beside `foreach: true`; left out for an
    optimizer without the argument); any other factory as it is."""
    keywords = getattr(factory, "keywords", None)
    if not isinstance(keywords, dict) or keywords.get("fused") != "auto":
        return factory
    rest = {k: v for k, v in keywords.items() if k != "fused"}
    if "fused" not in inspect.signature(factory.func).parameters:  # the user's own optimizer
        log.info("optim.optimizer.fused auto: %s takes no `fused`; left out", factory.func)
        return partial(factory.func, *factory.args, **rest)
    scaler = getattr(trainer.precision_plugin, "scaler", None) is not None
    fused = fused_choice("auto", scaler, device_type) and not keywords.get("foreach")
    log.info("optim.optimizer.fused auto: %s (%s, %s)", fused, trainer.precision, device_type)
    return partial(factory.func, *factory.args, **rest, fused=fused)


def clip_gradients(
    module: L.LightningModule, optimizer: Optimizer, value: float | None, algorithm: str | None
) -> None:
    """Lightning's gradient clipping (`LightningModule.clip_gradients`), but for one case: its
    mixed-precision plugin refuses to clip for any optimizer that unscales inside its step
    (fused Adam), a guard for fp16's GradScaler; without a scaler (bf16) there is nothing to
    unscale, and the plugin's base clipping, which is all it would run, runs directly."""
    plugin = module.trainer.precision_plugin
    if value and type(plugin) is MixedPrecision and plugin.scaler is None:
        algo = GradClipAlgorithmType(algorithm or "norm")
        Precision.clip_gradients(plugin, optimizer, value, algo)
    else:
        module.clip_gradients(optimizer, value, algorithm)
