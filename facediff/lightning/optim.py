"""Optimizer parameter groups and the learning-rate schedule of a training run."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

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
