"""Shared pieces of the benchmark: the device and its precisions, interleaved timing, statistics,
the measured matmul peak and the machine description that goes beside every number.

Every ratio the benchmark reports comes from cases timed round-robin in one process
(A, B, C, A, B, C, ...), after per-case warm-up, so that load from other processes on a shared
machine hits all cases alike; each case reports the median and the spread (min, max) of its reps.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from facediff.diffusion.sampling import AUTOCAST_DTYPES as DTYPES
from facediff.hardware import gpu_has_native_bf16

# environment variables that cap the instruction set of oneDNN, ATen's kernels and MKL
ISA_LIMIT_VARS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")


def pick_device(name: str | None = None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def mixed_precisions(device: torch.device) -> list[str]:
    """The autocast precisions this device offers for training (besides fp32)."""
    if device.type == "cuda":
        return (["bf16"] if gpu_has_native_bf16(str(device)) else []) + ["fp16"]
    return ["bf16"]  # CPU autocast: bfloat16


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median and spread (min, max) of repeated measurements."""
    vals = sorted(float(v) for v in values)
    return {"median": statistics.median(vals), "min": vals[0], "max": vals[-1], "n": len(vals)}


def interleave(
    cases: dict[str, Callable[[], Any]],
    reps: int,
    warmup: int,
    device: torch.device,
) -> dict[str, list[float]]:
    """Seconds per call of every case, timed round-robin: warm-up rounds, then `reps` rounds.

    A case whose call raises is dropped from later rounds and reported as {"error": ...} by the
    caller (its list stays shorter).
    """
    times: dict[str, list[float]] = {name: [] for name in cases}
    live = dict(cases)
    for round_ in range(warmup + reps):
        for name, fn in list(live.items()):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def matmul_peak(
    device: torch.device, precisions: Sequence[str], n: int = 2048, reps: int = 5
) -> dict[str, dict[str, float]]:
    """GFLOP/s of an n x n x n matrix product per precision, interleaved (the device's peak)."""
    mats = {}
    for p in precisions:
        dtype = torch.float32 if p == "fp32" else DTYPES[p]
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        mats[p] = (a, b)
    cases = {p: (lambda a=a, b=b: torch.mm(a, b)) for p, (a, b) in mats.items()}
    times = interleave(cases, reps, 1, device)
    flops = 2.0 * n**3
    return {
        p: {"gflops": flops / statistics.median(t) / 1e9, **summarize(t)} for p, t in times.items()
    }


def cpu_info() -> dict[str, Any]:
    """CPU model and the flags that matter for these numbers (from /proc/cpuinfo)."""
    model, flags = platform.processor() or "unknown", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    relevant = ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_bf16"]
    relevant += ["amx_tile", "amx_int8", "avx512_fp16"]
    return {
        "model": model,
        "cores": torch.get_num_threads(),
        "flags": [f for f in relevant if f in flags],
        "missing": [f for f in relevant if f not in flags],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        # set to emulate an older instruction set on this CPU (BENCHMARKS.md, run 16)
        "isa_limits": {k: os.environ[k] for k in ISA_LIMIT_VARS if os.environ.get(k)},
    }


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "cpu": cpu_info()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        with open("/proc/loadavg") as fh:
            info["loadavg_at_start"] = fh.read().split()[:3]
    except OSError:
        pass
    return info


def describe(info: dict[str, Any]) -> str:
    cpu = info["cpu"]
    gpu = f", GPU {info['gpu']}" if "gpu" in info else ""
    limits = " ".join(f"{k}={v}" for k, v in cpu.get("isa_limits", {}).items())
    kernels = f"; kernels {cpu['torch_cpu_capability']}"
    kernels += f", limited by {limits}" if limits else ""
    return (
        f"{cpu['model']} ({cpu['cores']} threads, flags {' '.join(cpu['flags']) or 'none'}; "
        f"no {' '.join(cpu['missing']) or '-'}{kernels}){gpu}; torch {info['torch']}; "
        f"load average at start {' '.join(info.get('loadavg_at_start', []))}"
    )
