"""What bounds a training step: where its time goes, by kind of kernel (torch.profiler).

    PYTHONPATH=. python -m benchmarks.profile_step --model unet_attn --size 64 --batch 256 \
        --precision bf16 [--channels-last] [--steps 5] [--json out.json]

Runs the benchmark's full training step (benchmarks.bench_train.TrainStep: forward, loss,
backward, clipping, AdamW, EMA) a few times under the profiler and prints, per step:
- wall time and the device's busy time (the sum of its kernels' times on a GPU): a busy share
  well under 100% means the GPU waits for the Python/launch side (launch-bound, not compute-bound);
- the busy time split into kinds: convolution and matmul, attention, normalisation, optimiser and
  EMA (the multi-tensor `_foreach` kernels), layout copies, and the rest (elementwise);
- the slowest individual kernels (or CPU ops, on a CPU);
- the host's work: how many ATen operators the forward and backward dispatch (top-level calls;
  the forward's come from Python, the backward's from the C++ autograd engine). Where the GPU
  waits for the host, the step's time grows with this count, not with the FLOPs.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.bench_train import TrainCase, TrainStep
from benchmarks.common import sync

# first match wins; kernel names on a GPU (cuDNN, cuBLAS, flash attention), aten op names on a CPU
KINDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("attention", re.compile(r"flash|fmha|attention|scaled_dot_product", re.I)),
    ("optimiser+EMA", re.compile(r"foreach|multi_tensor|adam|lerp", re.I)),
    (
        "normalisation",
        re.compile(
            r"group_norm|groupnorm|moments|fusedparams|gammabeta|internalgradients|batch_norm"
            r"|layer_norm",
            re.I,
        ),
    ),
    ("copy/cast", re.compile(r"nchwtonhwc|nhwctonchw|transpose|copy|contiguous", re.I)),
    ("conv+matmul", re.compile(r"gemm|conv|xmma|cutlass|cudnn|mkldnn|\bmm\b|addmm|bmm", re.I)),
)


def kind_of(name: str) -> str:
    """The kind of work a kernel or op name stands for ("elementwise+other" when none matches)."""
    for kind, pattern in KINDS:
        if pattern.search(name):
            return kind
    return "elementwise+other"


def count_ops(step: TrainStep) -> Counter[str]:
    """Top-level ATen operators (not those called inside another operator) of one forward and
    backward: what the host dispatches one by one in eager mode."""
    step.opt.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step.loss().backward()
    ops: Counter[str] = Counter()
    for evt in prof.events():
        parent = evt.cpu_parent
        if evt.name.startswith("aten::") and not (parent and parent.name.startswith("aten::")):
            ops[evt.name] += 1
    return ops


def profile_step(
    case: TrainCase, size: int, batch: int, device: torch.device, steps: int = 5, warmup: int = 3
) -> dict[str, Any]:
    """Profile `steps` training steps of `case`; times are per step, in milliseconds."""
    step = TrainStep(case, size, batch, device)
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()  # the wall time without the profiler's own overhead
    for _ in range(steps):
        step()
    sync(device)
    wall = time.perf_counter() - start
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    on_gpu = device.type == "cuda"
    times: dict[str, float] = {}
    for evt in prof.key_averages():
        if on_gpu:  # kernels only: their self time is the GPU's busy time
            us = evt.self_device_time_total if evt.device_type.name == "CUDA" else 0.0
        else:  # aten ops' own CPU time (their children are counted where they run)
            us = evt.self_cpu_time_total if evt.key.startswith("aten::") else 0.0
        if us > 0:
            times[evt.key] = times.get(evt.key, 0.0) + us / 1e3 / steps
    busy = sum(times.values())
    kinds: dict[str, float] = {}
    for name, ms in times.items():
        kinds[kind_of(name)] = kinds.get(kind_of(name), 0.0) + ms
    top = sorted(times.items(), key=lambda kv: -kv[1])[:12]
    ops = count_ops(step)
    return {
        "case": case.key, "size": step.size, "batch": batch, "device": str(device),
        "wall_ms": 1e3 * wall / steps, "busy_ms": busy,
        "busy_share": busy / (1e3 * wall / steps),
        "kinds_ms": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
        "top": [{"name": n[:120], "ms": ms} for n, ms in top],
        "fwd_bwd_ops": sum(ops.values()), "top_ops": dict(ops.most_common(8)),
    }  # fmt: skip


def print_profile(r: dict[str, Any]) -> None:
    what = "GPU kernels" if r["device"].startswith("cuda") else "aten ops' own CPU time"
    print(f"## Where a step's time goes: {r['case']}, {r['size']}px, batch {r['batch']}")
    print(f"- wall {r['wall_ms']:.1f} ms/step; {what} {r['busy_ms']:.1f} ms/step "
          f"({100 * r['busy_share']:.0f}% of the wall time)")  # fmt: skip
    print("\n| kind | ms/step | share of busy |\n|---|---|---|")
    for kind, ms in r["kinds_ms"].items():
        print(f"| {kind} | {ms:.2f} | {100 * ms / r['busy_ms']:.0f}% |")
    print("\n| slowest | ms/step |\n|---|---|")
    for t in r["top"]:
        print(f"| {t['name'][:90]} | {t['ms']:.2f} |")
    common = ", ".join(f"{name} {n}" for name, n in r["top_ops"].items())
    print(f"\nHost work: {r['fwd_bwd_ops']} top-level ATen operators in forward + backward "
          f"({common}, ...)")  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="unet_attn")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch < 1:
        p.error("--steps and --batch must be at least 1")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    case = TrainCase(args.model, args.precision, channels_last=args.channels_last)
    result = profile_step(case, args.size, args.batch, device, args.steps)
    print_profile(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
