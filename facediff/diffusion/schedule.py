"""Noise schedules for discrete-time DDPM (Ho et al. 2020).

Everything here is a pure function of the schedule's hyper-parameters. `NoiseSchedule` holds the
schedule only (what the network predicts and how the loss is weighted are the objective's, see
`facediff.diffusion.objective.Objective`) and keeps the resulting tensors together (as
non-persistent buffers, so they follow `.to(device)` but never enter a checkpoint's state_dict,
and EMA never averages them).

Notation (DDPM paper): beta_t, alpha_t = 1 - beta_t, alpha_bar_t = prod_{s<=t} alpha_s, and
x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps. Timesteps are 0-based: t in [0, T).

Why the default is not the original's linear schedule: with betas 1e-4..0.02 over only T = 500
steps, sqrt(alpha_bar_{T-1}) is about 0.08, i.e. the last training step still holds 8% of the
image, while sampling starts from pure N(0, I) noise. The default is therefore the cosine
schedule (Nichol & Dhariwal 2021), whose last step holds ~1e-4 of the image. The linear schedule
stays available, optionally rescaled to zero terminal SNR (Lin et al. 2024), which in turn
requires v-prediction because epsilon carries no information about x_0 at SNR 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

SCHEDULES = ("linear", "cosine")


def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Ho et al.'s linear betas, (T,) float64."""
    return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal's cosine schedule: alpha_bar(t) = cos^2((t/T + s) / (1 + s) * pi/2)."""
    steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps  # (T+1,)
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]  # (T,)
    return betas.clamp(max=max_beta)


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Shift and scale sqrt(alpha_bar) so the last step has SNR exactly 0 (Lin et al. 2024)."""
    sqrt_ab = torch.cumprod(1 - betas, 0).sqrt()  # (T,)
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    alpha_bar = sqrt_ab**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


def make_betas(
    schedule: str,
    num_steps: int,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    zero_terminal_snr: bool = False,
) -> Tensor:
    """Betas (T,) float64 for a named schedule."""
    if num_steps < 2:
        raise ValueError(f"diffusion.num_steps must be >= 2, got {num_steps}.")
    if schedule == "linear":
        if not 0 < beta_start < beta_end < 1:
            raise ValueError(
                f"diffusion: need 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}."
            )
        betas = linear_betas(num_steps, beta_start, beta_end)
    elif schedule == "cosine":
        betas = cosine_betas(num_steps)
    else:
        raise ValueError(f"Unknown diffusion.schedule={schedule!r}; choose one of {SCHEDULES}.")
    return rescale_zero_terminal_snr(betas) if zero_terminal_snr else betas


class NoiseSchedule(nn.Module):
    """The tensors of one schedule, as non-persistent float32 buffers of shape (T,)."""

    betas: Tensor
    alphas: Tensor
    alpha_bar: Tensor

    def __init__(
        self,
        num_steps: int = 500,
        schedule: str = "cosine",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        zero_terminal_snr: bool = False,
    ) -> None:
        super().__init__()
        betas = make_betas(schedule, num_steps, beta_start, beta_end, zero_terminal_snr)
        alpha_bar = torch.cumprod(1 - betas, 0)
        self.num_steps = num_steps
        self.zero_terminal_snr = zero_terminal_snr
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alphas", (1 - betas).float(), persistent=False)
        self.register_buffer("alpha_bar", alpha_bar.float(), persistent=False)

    def terminal_signal(self) -> float:
        """sqrt(alpha_bar) at the last step: how much of x_0 survives in x_{T-1}."""
        return float(self.alpha_bar[-1].sqrt())

    def extra_repr(self) -> str:
        return f"T={self.num_steps}, terminal sqrt(alpha_bar)={self.terminal_signal():.2e}"


def gather(values: Tensor, t: Tensor, ndim: int = 4) -> Tensor:
    """values[t] reshaped to (B, 1, 1, 1) for broadcasting against images."""
    return values[t].reshape(-1, *([1] * (ndim - 1)))
