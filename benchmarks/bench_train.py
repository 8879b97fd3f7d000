"""Training throughput: the full step of every case, interleaved; FLOPs per image; EMA share.

A step is what a facediff training step does: draw t and the noise, forward and MSE under the
case's autocast, backward, gradient clipping at 1.0, AdamW (fused as `optim.optimizer.fused:
auto` chooses) and the EMA update through facediff's multi-tensor update
(`facediff.ema.EMADecay`, one `torch._foreach_lerp_` over all tensors).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import interleave, summarize, sync
from benchmarks.models import build_model, model_size, num_parameters, set_grad_checkpoint
from facediff.diffusion.objective import build_diffusion, diffusion_loss
from facediff.diffusion.sampling import network_precision
from facediff.lightning.ema import EMADecay
from facediff.lightning.optim import fused_choice


def error_text(exc: BaseException) -> str:
    """One line naming the exception (tables and JSON stay readable)."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


@dataclass(frozen=True)
class TrainCase:
    model: str
    precision: str = "fp32"
    channels_last: bool = False
    grad_ckpt: bool = False
    compile: bool = False
    # torch.compile's "reduce-overhead" mode: CUDA graphs replay the compiled forward and
    # backward with one launch each, which removes the host's per-kernel cost (on a GPU; on a
    # CPU it compiles as `compile` does)
    compile_graphs: bool = False

    @property
    def key(self) -> str:
        opts = [o for o, on in (("cl", self.channels_last), ("ckpt", self.grad_ckpt),
                                ("compile", self.compile),
                                ("compile+graphs", self.compile_graphs)) if on]  # fmt: skip
        return "/".join([self.model, self.precision, *opts])


class TrainStep:
    """One case's network, optimiser, EMA copy and batch; calling it runs one training step."""

    def __init__(self, case: TrainCase, size: int, batch: int, device: torch.device) -> None:
        self.case, self.device, self.batch = case, device, batch
        self.size = model_size(case.model, size)
        net = build_model(case.model, self.size).to(device)
        set_grad_checkpoint(net, case.grad_ckpt)
        fmt = torch.channels_last if case.channels_last else torch.contiguous_format
        net = net.to(memory_format=fmt)
        self.net = net
        self.forward: nn.Module = net
        if case.compile or case.compile_graphs:
            mode = "reduce-overhead" if case.compile_graphs else None
            self.forward = torch.compile(net, mode=mode)  # type: ignore[assignment]
        self.params = [p for p in net.parameters() if p.requires_grad]
        # fused as training's `optim.optimizer.fused: auto` decides (not under fp16's scaler)
        fused = fused_choice("auto", case.precision == "fp16", device.type)
        self.opt = torch.optim.AdamW(self.params, lr=2e-4, fused=fused)
        self.scaler = torch.amp.GradScaler(device.type, enabled=case.precision == "fp16")
        self.ema_avg = EMADecay(decay=0.995)
        averaged = [*net.parameters(), *net.buffers()]
        self.ema_current = [t.detach() for t in averaged]
        self.ema = [t.detach().clone() for t in averaged]
        self.ema_steps = torch.tensor(10_000)
        self.schedule, self.objective = build_diffusion({"num_steps": 500, "prediction": "v"})
        self.schedule = self.schedule.to(device)
        g = torch.Generator().manual_seed(0)
        x0 = torch.rand(batch, 3, self.size, self.size, generator=g) * 2 - 1
        self.x0 = x0.to(device).contiguous(memory_format=fmt)
        self.y = torch.randint(0, 4, (batch,), generator=g).to(device)  # 3 = the null class
        self.ema_seconds: list[float] = []
        self.grad_norms: list[Tensor] = []  # one per step: a NaN step is no training rate

    def loss(self) -> Tensor:
        t = torch.randint(0, self.schedule.num_steps, (self.batch,), device=self.device)
        noise = torch.randn_like(self.x0)
        with network_precision(self.case.precision, self.device):
            return diffusion_loss(
                self.forward, self.schedule, self.objective, self.x0, self.y, t, noise
            ).mean()

    def ema_update(self) -> None:
        self.ema_avg(self.ema, self.ema_current, self.ema_steps)

    def __call__(self) -> None:
        loss = self.loss()
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        self.grad_norms.append(torch.nn.utils.clip_grad_norm_(self.params, 1.0).detach())
        self.scaler.step(self.opt)
        self.scaler.update()
        sync(self.device)
        start = time.perf_counter()
        self.ema_update()
        sync(self.device)
        self.ema_seconds.append(time.perf_counter() - start)


def flops_per_image(model: str, size: int, device: torch.device, batch: int = 2) -> float:
    """Forward + backward FLOPs of one training image, counted by FlopCounterMode (fp32,
    no checkpointing: the useful work; matmuls, convolutions and attention are counted).

    Attention runs on SDPA's math path here: FlopCounterMode has no formula for the CPU's fused
    attention kernel (it counted 0 there: 9 of 56 GFLOP at 64x64 when unet_attn had attention
    at 32x32), and the math path's two matrix products per direction are the work any kernel
    must do."""
    step = TrainStep(TrainCase(model), size, batch, device)
    step.opt.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        step.loss().backward()
    return counter.get_total_flops() / batch


def run_training(
    cases: list[TrainCase],
    size: int,
    batch: int,
    reps: int,
    warmup: int,
    device: torch.device,
    peaks: dict[str, dict[str, float]],
) -> dict[str, dict[str, Any]]:
    """{case key: result} for every case, all timed round-robin in this process."""
    results: dict[str, dict[str, Any]] = {}
    steps: dict[str, TrainStep] = {}
    for case in cases:
        try:
            steps[case.key] = TrainStep(case, size, batch, device)
        except Exception as exc:  # e.g. diffusers missing, compile unsupported
            results[case.key] = {**case.__dict__, "error": error_text(exc)}
    times = interleave_safely(steps, reps, warmup, device, results)
    flops = {}
    for case in cases:
        if case.key not in steps or case.key in results:
            continue
        if case.model not in flops:
            flops[case.model] = flops_per_image(case.model, size, device)
        st, secs = steps[case.key], times[case.key]
        rates = [batch / s for s in secs]
        ema = st.ema_seconds[-len(secs) :]
        achieved = flops[case.model] * statistics.median(rates)
        peak = peaks.get(case.precision, {}).get("gflops")
        results[case.key] = {
            **case.__dict__,
            "size": st.size,
            "batch": batch,
            "params": num_parameters(st.net),
            "img_per_s": summarize(rates),
            "ms_per_step": summarize([s * 1e3 for s in secs]),
            "step_seconds": secs,  # one per round, in order: pairs rounds across cases
            "ema_share": summarize([e / s for e, s in zip(ema, secs, strict=True)]),
            # steps whose gradient norm was NaN/inf (fp16's GradScaler skips a few at the start;
            # every step: a broken kernel, e.g. torch.compile in bf16 on a CPU, run 24)
            "nonfinite_steps": sum(not bool(n.isfinite()) for n in st.grad_norms[-len(secs) :]),
            "steps": len(secs),  # the timed ones
            "gflop_per_img": flops[case.model] / 1e9,
            "achieved_gflops": achieved / 1e9,
            "peak_share": None if not peak else achieved / 1e9 / peak,
        }
    return {case.key: results[case.key] for case in cases}


def interleave_safely(
    steps: dict[str, TrainStep],
    reps: int,
    warmup: int,
    device: torch.device,
    errors: dict[str, dict[str, Any]],
) -> dict[str, list[float]]:
    """`interleave`, but a case that fails (e.g. torch.compile without a compiler) is recorded
    in `errors` and the others go on."""

    def guarded(key: str, step: TrainStep) -> Any:
        def run() -> None:
            if key in errors:
                return
            try:
                step()
            except Exception as exc:
                errors[key] = {**step.case.__dict__, "error": error_text(exc)}

        return run

    return interleave({k: guarded(k, s) for k, s in steps.items()}, reps, warmup, device)
