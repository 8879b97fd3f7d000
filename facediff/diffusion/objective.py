"""The training objective: forward noising, prediction targets, loss weighting, label dropout.

Small pure functions in the papers' notation. `ab` is alpha_bar_t already gathered to (B,1,1,1).
- DDPM (Ho et al. 2020): x_t = sqrt(ab) x_0 + sqrt(1-ab) eps, predict eps with MSE.
- v-prediction (Salimans & Ho 2022): v = sqrt(ab) eps - sqrt(1-ab) x_0.
- min-SNR-gamma weighting (Hang et al. 2023): weight = min(SNR, gamma) / SNR for eps-prediction,
  min(SNR, gamma) / (SNR + 1) for v-prediction, so every loss is measured in x_0 units, clipped.
- classifier-free guidance training (Ho & Salimans 2022): drop each sample's label with
  probability p_uncond (the original dropped whole batches).

`Objective` holds the parametrisation and the loss weighting, apart from the network and the
noise schedule (as EDM keeps preconditioning and loss apart); `build_diffusion` splits a
conf/diffusion/*.yaml config into the schedule and the objective.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from facediff.diffusion.schedule import NoiseSchedule, gather

PREDICTIONS = ("eps", "v")
OBJECTIVE_KEYS = ("prediction", "min_snr_gamma")


@dataclass(frozen=True)
class Objective:
    """What the network predicts ("eps" or "v") and the min-SNR-gamma loss weighting (None: off)."""

    prediction: str = "eps"
    min_snr_gamma: float | None = None

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(
                f"Unknown diffusion.prediction={self.prediction!r}; choose {PREDICTIONS}."
            )
        if self.min_snr_gamma is not None and self.min_snr_gamma <= 0:
            raise ValueError(
                f"diffusion.min_snr_gamma must be > 0 or null, got {self.min_snr_gamma}."
            )

    def target(self, x0: Tensor, eps: Tensor, ab: Tensor) -> Tensor:
        """What the network is trained to output: eps, or v."""
        return eps if self.prediction == "eps" else v_target(x0, eps, ab)

    def split(self, out: Tensor, x_t: Tensor, ab: Tensor) -> tuple[Tensor, Tensor]:
        """The network output as (x0_hat, eps_hat)."""
        return split_prediction(out, x_t, ab, self.prediction)

    def weight(self, ab: Tensor) -> Tensor:
        return loss_weight(ab, self.prediction, self.min_snr_gamma)


def build_diffusion(config: Mapping[str, Any]) -> tuple[NoiseSchedule, Objective]:
    """The schedule and the objective of a diffusion config (conf/diffusion/*.yaml keys)."""
    config = dict(config)
    objective = Objective(**{k: config.pop(k) for k in OBJECTIVE_KEYS if k in config})
    if config.get("zero_terminal_snr") and objective.prediction == "eps":
        raise ValueError(
            "diffusion.zero_terminal_snr=true needs diffusion.prediction=v: at SNR 0 the noise "
            "eps says nothing about the image. Set prediction=v or zero_terminal_snr=false."
        )
    return NoiseSchedule(**config), objective


def q_sample(x0: Tensor, eps: Tensor, ab: Tensor) -> Tensor:
    """Sample x_t ~ q(x_t | x_0): (B,C,H,W)."""
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


def v_target(x0: Tensor, eps: Tensor, ab: Tensor) -> Tensor:
    """The velocity v = sqrt(ab) eps - sqrt(1-ab) x_0: (B,C,H,W)."""
    return ab.sqrt() * eps - (1 - ab).sqrt() * x0


def split_prediction(
    out: Tensor, x_t: Tensor, ab: Tensor, prediction: str
) -> tuple[Tensor, Tensor]:
    """Turn the network output into (x0_hat, eps_hat), both (B,C,H,W)."""
    if prediction == "eps":
        eps = out
        x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
    elif prediction == "v":
        x0 = ab.sqrt() * x_t - (1 - ab).sqrt() * out
        eps = (1 - ab).sqrt() * x_t + ab.sqrt() * out
    else:
        raise ValueError(f"Unknown prediction {prediction!r}; choose 'eps' or 'v'.")
    return x0, eps


def snr(ab: Tensor) -> Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar)."""
    return ab / (1 - ab)


def loss_weight(ab: Tensor, prediction: str, min_snr_gamma: float | None) -> Tensor:
    """Per-sample weight of the MSE: 1, or min-SNR-gamma. Shape of ab, i.e. (B,1,1,1)."""
    if min_snr_gamma is None:
        return torch.ones_like(ab)
    s = snr(ab)
    clipped = s.clamp(max=min_snr_gamma)
    return clipped / s if prediction == "eps" else clipped / (s + 1)


def drop_labels(
    y: Tensor, p_uncond: float, null_id: int, generator: torch.Generator | None = None
) -> Tensor:
    """Replace each label independently by the null class with probability p_uncond: (B,)."""
    if p_uncond <= 0:
        return y
    drop = torch.rand(y.shape, device=y.device, generator=generator) < p_uncond
    return torch.where(drop, torch.full_like(y, null_id), y)


def diffusion_loss(
    net: Callable[[Tensor, Tensor, Tensor], Tensor],
    schedule: NoiseSchedule,
    objective: Objective,
    x0: Tensor,
    y: Tensor,
    t: Tensor,
    eps: Tensor,
) -> Tensor:
    """Weighted MSE between the network output and its target, per sample: (B,).

    x0: (B,C,H,W) clean images in [-1, 1]; y: (B,) class ids (null id = unconditional);
    t: (B,) integer timesteps in [0, T); eps: (B,C,H,W) standard normal noise.
    """
    ab = gather(schedule.alpha_bar, t)  # (B,1,1,1)
    x_t = q_sample(x0, eps, ab)
    out = net(x_t, t, y)
    target = objective.target(x0, eps, ab)
    mse = (out.float() - target.float()).pow(2).mean(dim=(1, 2, 3))  # (B,)
    return mse * objective.weight(ab).flatten()
