"""Reverse-process samplers: ancestral DDPM, DDIM and DPM-Solver++(2M), on any subsequence of the
T timesteps.

Each is one update from timestep t to an earlier s (s = -1 means "to x_0", alpha_bar_{-1} = 1):
- DDPM (Ho et al. 2020, eq. 7), respaced as in Nichol & Dhariwal 2021: sample the posterior
  q(x_s | x_t, x0_hat) with alpha' = ab_t / ab_s, beta' = 1 - alpha':
      mean = sqrt(ab_s) beta' / (1-ab_t) x0_hat + sqrt(alpha') (1-ab_s) / (1-ab_t) x_t
      var  = beta' (1-ab_s) / (1-ab_t)
- DDIM (Song et al. 2021, eq. 12): x_s = sqrt(ab_s) x0_hat + sqrt(1-ab_s-sigma^2) eps_hat + sigma z,
  sigma = eta sqrt((1-ab_s)/(1-ab_t)) sqrt(1 - ab_t/ab_s); eta = 1 gives DDPM's variance.
- DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), with alpha = sqrt(ab), sigma = sqrt(1-ab),
  lambda = log(alpha / sigma), h = lambda_s - lambda_t, and its SDE form (Lu et al. 2022,
  appendix; k-diffusion's dpmpp_2m_sde) with the same eta as DDIM:
      x_s = (sigma_s / sigma_t) e^{-eta h} x_t + alpha_s (1 - e^{-(1+eta) h}) D
            + sigma_s sqrt(1 - e^{-2 eta h}) z,
      D = (1 + 1/(2r)) x0_hat - 1/(2r) x0_hat_prev, r = h_prev / h  (D = x0_hat on the first step).
  eta = 0 is the ODE solver (its first step is DDIM's); at eta = 1 a first-order step is exactly
  DDPM's posterior sample, and the fresh noise corrects the network's errors instead of carrying
  them along: the default (conf/sampling/default.yaml), measured in docs/recipes.md.
Classifier-free guidance (Ho & Salimans 2022) runs conditional and unconditional halves in one
batch of 2B: out = uncond + w (cond - uncond), i.e. torch.lerp(uncond, cond, w); w = 1 is the
plain conditional model (and skips the unconditional half), w = 0 the unconditional one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from facediff.diffusion.objective import Objective
from facediff.diffusion.schedule import NoiseSchedule
from facediff.diffusion.settings import SPACINGS, SamplingSettings
from facediff.hardware import auto_sampling_precision
from facediff.models.group_norm import fast_in_channels_last

# Deterministic samplers need a usable x0_hat at the first step; an epsilon model's x0_hat has its
# error amplified by 1 / sqrt(SNR) there (10^4 at the cosine schedule's SNR of ~1e-8).
MIN_DETERMINISTIC_START_SNR = 1e-3
Generators = torch.Generator | Sequence[torch.Generator] | None


def spaced_timesteps(num_steps: int, steps: int, spacing: str) -> list[int]:
    """`steps` timesteps from T-1 down, evenly spaced; both spacings start at T-1, where the
    first step sees pure noise, as in training (Lin et al. 2024).

    "trailing" (Lin et al.'s): T-1, T-1-T/steps, ..., T/steps - 1: the last step denoises from
    t = T/steps - 1 (19 for 25 of 500 steps), whose noise the final prediction, a posterior
    mean, smooths away with the finest detail. "linspace": T-1 down to 0 inclusive: the last
    step denoises from t = 0, almost noise-free (docs/recipes.md, "Sharpness").
    """
    if not 1 <= steps <= num_steps:
        raise ValueError(f"steps must be in 1..{num_steps} (the model's T), got {steps}.")
    if spacing not in SPACINGS:
        raise ValueError(f"Unknown spacing {spacing!r}; choose one of {SPACINGS}.")
    if spacing == "linspace" and steps > 1:
        return [round((num_steps - 1) * (1 - i / (steps - 1))) for i in range(steps)]
    ratio = num_steps / steps
    return [round(num_steps - i * ratio) - 1 for i in range(steps)]


def deterministic_start_problem(
    prediction: str, sampler: str, eta: float, alpha_bar_start: float
) -> str | None:
    """Why (prediction, sampler) cannot work from a first step at alpha_bar_start, or None.

    An epsilon model's x0_hat = (x_t - sqrt(1-ab) eps_hat) / sqrt(ab) carries the network's error
    times 1 / sqrt(SNR). Ancestral sampling (ddpm; ddim and dpmpp at eta > 0) washes that out with
    fresh noise; ddim and dpmpp at eta 0 carry it to the end: measured on the demo, 0.72 class
    consistency against 0.96 for ddpm. v-prediction has no such problem.
    """
    deterministic = sampler in ("ddim", "dpmpp") and eta == 0
    start_snr = alpha_bar_start / max(1.0 - alpha_bar_start, 1e-12)
    if prediction == "eps" and deterministic and start_snr < MIN_DETERMINISTIC_START_SNR:
        return (
            f"sampler={sampler} with eta=0 cannot sample this epsilon-prediction model: its "
            f"first step has SNR {start_snr:.1e}, where the predicted image is amplified noise "
            "that a deterministic sampler carries to the end. Use eta=1.0 (or sampler=ddpm), or "
            "train with diffusion.prediction=v (the default)."
        )
    return None


def check_fits(settings: SamplingSettings, schedule: NoiseSchedule, objective: Objective) -> None:
    """Raise ValueError when `settings` cannot work with this model: more steps than its T, or a
    deterministic sampler from zero SNR with an epsilon model (`deterministic_start_problem`)."""
    settings.check_steps(schedule.num_steps)
    problem = deterministic_start_problem(
        objective.prediction, settings.sampler, settings.eta, float(schedule.alpha_bar[-1])
    )
    if problem is not None:
        raise ValueError(problem)


def guided_output(
    net: nn.Module, x: Tensor, t: Tensor, y: Tensor, guidance: float, null_id: int
) -> Tensor:
    """Network output with classifier-free guidance, conditional and unconditional in one batch."""
    if guidance == 1.0:
        return net(x, t, y)
    if y.is_floating_point():  # class weights (B, K): pad the null column K, null = one-hot on it
        y = F.pad(y, (0, null_id + 1 - y.shape[1]))
        null = F.one_hot(torch.full_like(y[:, 0], null_id, dtype=torch.long), null_id + 1)
        null = null.to(y.dtype)
    else:
        null = torch.full_like(y, null_id)
    out = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))  # (2B,C,H,W)
    cond, uncond = out.chunk(2)
    return torch.lerp(uncond, cond, guidance)


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # precision name -> dtype


def sampling_precision(precision: str, device: torch.device) -> str:
    """The concrete precision ("fp32" | "bf16" | "fp16") that `precision` means on `device`:
    "auto" is bf16 on GPUs with native bf16 and on CPUs whose bf16 matrix units (AMX,
    AVX512-BF16) measure faster, fp32 elsewhere (facediff.hardware.auto_sampling_precision)."""
    if precision != "auto":
        return precision
    return auto_sampling_precision(str(device))


def network_layout(net: nn.Module, precision: str, device: torch.device) -> torch.memory_format:
    """channels_last for a 16-bit pass on a CPU through a network of facediff's GroupNorms
    (sampling steps 1.43x faster for unet_attn, 1.24x for the CPU recipe's network, BENCHMARKS.md
    run 28: bf16 convolutions reorder NCHW inputs), the contiguous format elsewhere."""
    fast = device.type == "cpu" and sampling_precision(precision, device) != "fp32"
    if fast and fast_in_channels_last(net):
        return torch.channels_last
    return torch.contiguous_format


def network_precision(precision: str, device: torch.device) -> AbstractContextManager[object]:
    """Autocast for the network's passes while sampling ("fp32": none; "auto": see
    `sampling_precision`). bf16 pays on GPUs and on CPUs with bf16 matrix units (AMX); on other
    CPUs it is much slower (BENCHMARKS.md)."""
    precision = sampling_precision(precision, device)
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


def ddpm_step(x_t: Tensor, x0: Tensor, ab_t: Tensor, ab_s: Tensor, noise: Tensor) -> Tensor:
    """One ancestral step t -> s from the posterior q(x_s | x_t, x0). Scalars ab_t, ab_s."""
    alpha = ab_t / ab_s
    beta = 1 - alpha
    mean = (ab_s.sqrt() * beta * x0 + alpha.sqrt() * (1 - ab_s) * x_t) / (1 - ab_t)
    var = beta * (1 - ab_s) / (1 - ab_t)
    return mean + var.sqrt() * noise


def ddim_step(
    x0: Tensor, eps: Tensor, ab_t: Tensor, ab_s: Tensor, noise: Tensor | None, eta: float
) -> Tensor:
    """One DDIM step t -> s. Scalars ab_t, ab_s; eta = 0 is deterministic (`noise` may be None)."""
    sigma = eta * ((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)).sqrt()
    x_s = ab_s.sqrt() * x0 + (1 - ab_s - sigma**2).clamp(min=0).sqrt() * eps
    if eta > 0:
        if noise is None:
            raise ValueError("ddim with eta > 0 needs noise.")
        x_s = x_s + sigma * noise
    return x_s


def dpmpp_2m_step(
    x_t: Tensor,
    x0: Tensor,
    ab_t: Tensor,
    ab_s: Tensor,
    x0_prev: Tensor | None,
    h_prev: float,
    noise: Tensor | None = None,
    eta: float = 0.0,
) -> tuple[Tensor, float]:
    """One DPM-Solver++(2M) step t -> s, the ODE at eta = 0, the SDE at eta > 0 (then `noise`,
    standard normal like x_t, is required); returns x_s and this step's h (for the next step)."""
    a_t, sig_t, a_s, sig_s = ab_t.sqrt(), (1 - ab_t).sqrt(), ab_s.sqrt(), (1 - ab_s).sqrt()
    exp_neg_h = a_t * sig_s / (sig_t * a_s)  # e^{-h}, finite even at SNR 0 (a_t = 0)
    h = float(-torch.log(exp_neg_h)) if a_t > 0 else float("inf")
    D = x0
    if x0_prev is not None and 0 < h < float("inf") and h_prev < float("inf"):
        r = h_prev / h
        D = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev
    x_s = sig_s / sig_t * exp_neg_h**eta * x_t + a_s * (1 - exp_neg_h ** (1 + eta)) * D
    if eta > 0:
        if noise is None:
            raise ValueError("dpmpp with eta > 0 needs noise.")
        x_s = x_s + sig_s * (1 - exp_neg_h ** (2 * eta)).sqrt() * noise
    return x_s, h


def randn(shape: Sequence[int], generator: Generators, device: torch.device) -> Tensor:
    """Standard normal noise drawn on the CPU; with one generator per sample, sample i's noise
    depends only on its own generator, so results do not depend on how samples are batched."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator).to(device)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}.")
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in generator]).to(device)


@torch.no_grad()
def sample(
    net: nn.Module,
    schedule: NoiseSchedule,
    objective: Objective,
    y: Tensor,
    x_T: Tensor,
    settings: SamplingSettings,
    *,
    clip_denoised: bool = True,
    generator: Generators = None,
    on_step: Callable[[int, Tensor, Tensor], None] | None = None,
) -> Tensor:
    """Run the reverse process from x_T (B,C,H,W) to images in [-1, 1].

    y: (B,) class ids or (B, K) class weights. `settings`: sampler, steps, guidance and eta
    (its seed is the caller's business: the noise comes from `generator`, a CPU generator or
    one per sample, for the per-step noise of DDPM, and of DDIM and DPM-Solver++ with eta > 0).
    `on_step(t, x_t, x0_hat)` sees every step (for figures).
    """
    null_id = net.num_classes
    layout = network_layout(net, settings.precision, x_T.device)
    ts = spaced_timesteps(schedule.num_steps, settings.steps, settings.spacing)
    x, x0_prev, h_prev = x_T, None, float("inf")
    for i, t in enumerate(ts):
        s = ts[i + 1] if i + 1 < len(ts) else -1
        ab_t = schedule.alpha_bar[t]
        ab_s = schedule.alpha_bar[s] if s >= 0 else torch.ones_like(ab_t)
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        with network_precision(settings.precision, x.device):
            x_in = x.contiguous(memory_format=layout)
            out = guided_output(net, x_in, t_batch, y, settings.guidance, null_id)
        out = out.float().contiguous()
        x0, eps = objective.split(out, x, ab_t)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
            eps = (x - ab_t.sqrt() * x0) / (1 - ab_t).sqrt()
        if on_step is not None:
            on_step(t, x, x0)
        if s < 0:
            x = x0
            break
        sampler, eta = settings.sampler, settings.eta
        stochastic = sampler == "ddpm" or eta > 0
        noise = randn(x.shape, generator, x.device) if stochastic else None
        if sampler == "ddpm":
            x = ddpm_step(x, x0, ab_t, ab_s, noise)
        elif sampler == "dpmpp":
            x, h_prev = dpmpp_2m_step(x, x0, ab_t, ab_s, x0_prev, h_prev, noise, eta)
            x0_prev = x0
        else:
            x = ddim_step(x0, eps, ab_t, ab_s, noise, eta)
    return x.clamp(-1, 1)
