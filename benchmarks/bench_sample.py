"""Sampling throughput: images/s of each facediff sampler at its usual step count, with
classifier-free guidance (conditional and unconditional halves in one batch of 2B), in each
precision asked for (the sampling settings' `precision`: autocast for the network's passes).

A sampler step costs one network evaluation on 2B images plus a few element-wise updates, so
the time of a run is proportional to its step count. `measured_steps` (default: the usual count)
lets a quick run time fewer steps of the same sampler and scale to the usual count; the JSON
records both numbers, and `extrapolated` says when the rate was scaled.
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.bench_train import error_text
from benchmarks.common import interleave, summarize
from benchmarks.models import build_model, model_size
from facediff.diffusion.objective import build_diffusion
from facediff.diffusion.sampling import sample
from facediff.diffusion.settings import SamplingSettings

USUAL_STEPS = {"ddpm": 100, "ddim": 50, "dpmpp": 25}  # sample_grid, common DDIM, sample.yaml


def run_sampling(
    models: list[str],
    size: int,
    batch: int,
    reps: int,
    warmup: int,
    device: torch.device,
    precisions: tuple[str, ...] = ("fp32",),
    guidance: float = 3.0,
    measured_steps: int | None = None,
    samplers: dict[str, int] | None = None,
) -> dict[str, dict[str, Any]]:
    """{"model/precision/sampler": result}, all cases interleaved."""
    samplers = dict(samplers or USUAL_STEPS)
    eta = SamplingSettings.defaults().eta  # the default's noise (ddim, dpmpp); ddpm ignores it
    schedule, objective = build_diffusion({"num_steps": 500, "prediction": "v"})
    schedule = schedule.to(device)
    cases, meta, errors = {}, {}, {}
    for name in models:
        try:
            s = model_size(name, size)
            net = build_model(name, s).to(device).eval()
        except Exception as exc:
            errors[name] = error_text(exc)
            continue
        y = torch.arange(batch, device=device) % net.num_classes
        x_T = torch.randn(batch, 3, s, s, generator=torch.Generator().manual_seed(0)).to(device)
        for precision in precisions:
            for sampler, usual in samplers.items():
                steps = min(usual, measured_steps or usual)
                settings = SamplingSettings.defaults().replace(
                    sampler=sampler, steps=steps, guidance=guidance, eta=eta, seed=0,
                    precision=precision,
                )  # fmt: skip

                def run(net=net, y=y, x_T=x_T, settings=settings) -> None:
                    with torch.inference_mode():
                        sample(net, schedule, objective, y, x_T, settings)

                key = f"{name}/{precision}/{sampler}"
                cases[key] = run
                meta[key] = {"model": name, "sampler": sampler, "size": s, "usual_steps": usual}
                meta[key].update(measured_steps=steps, eta=eta, precision=precision)
    times = interleave(cases, reps, warmup, device)
    out: dict[str, dict[str, Any]] = {}
    for key, secs in times.items():
        m = meta[key]
        scale = m["measured_steps"] / m["usual_steps"]  # time of a run at the usual count
        rates = [batch * scale / t for t in secs]
        out[key] = {
            **m,
            "batch": batch,
            "guidance": guidance,
            "extrapolated": m["measured_steps"] != m["usual_steps"],
            "ms_per_step": summarize([t / m["measured_steps"] * 1e3 for t in secs]),
            "img_per_s": summarize(rates),
        }
    for name, err in errors.items():
        out[f"{name}/*"] = {"model": name, "error": err}
    return out
