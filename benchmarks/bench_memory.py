"""Peak memory of one training step, with and without gradient checkpointing (on a CPU in a
subprocess, on CUDA in-process: bench.py decides).

On CUDA: `torch.cuda.max_memory_allocated()` during the step, above what was allocated before it.
On a CPU: peak RSS growth. The child sets glibc's mmap threshold to 64 KiB (mallopt), so every
tensor buffer of 64 KiB or more is its own mapping and goes back to the OS when freed (otherwise
the heap keeps freed memory and RSS overstates what is live); it runs one warm-up step (AdamW's
state now exists), resets the kernel's high-water mark (`/proc/self/clear_refs`, 5), runs a
second step and reports VmHWM minus the VmRSS just before that step: activations, gradients and
temporaries of a step, the same quantity CUDA's counter reports.

    python -m benchmarks.bench_memory --model unet_attn --size 64 --batch 32

Both cases run one after the other in the child; each reports its own step's growth over the
RSS just before that step, so the first case's (freed) buffers do not count against the second.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).parents[1]


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def mmap_large_buffers(threshold: int = 65536) -> bool:
    """glibc: serve allocations >= threshold by mmap, so freed tensors leave the RSS at once."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, threshold))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def measure(model: str, size: int, batch: int, precision: str, grad_ckpt: bool) -> dict[str, Any]:
    """Run in the child: one warm-up step, then the peak growth of a second step (MiB)."""
    from benchmarks.bench_train import TrainCase, TrainStep
    from benchmarks.common import pick_device

    device = pick_device()
    if device.type == "cpu":  # RSS only; CUDA's own counter needs no help from the heap
        mmap_large_buffers()
    step = TrainStep(TrainCase(model, precision, grad_ckpt=grad_ckpt), size, batch, device)
    step()
    step.opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak, method = torch.cuda.max_memory_allocated() - before, "cuda_max_allocated"
    else:
        before = _status_kib("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")
        step()
        peak, method = _status_kib("VmHWM") * 1024 - before, "rss_hwm_growth"
    return {"peak_mib": peak / 2**20, "baseline_mib": before / 2**20, "method": method}


def measure_both(model: str, size: int, batch: int, precision: str) -> dict[str, Any]:
    return {
        label: measure(model, size, batch, precision, ckpt)
        for label, ckpt in (("plain", False), ("grad_ckpt", True))
    }


def with_reduction(out: dict[str, Any]) -> dict[str, Any]:
    plain = out["plain"]["peak_mib"]
    out["reduction"] = 1 - out["grad_ckpt"]["peak_mib"] / plain if plain > 0 else None
    return out


def run_memory(
    model: str, size: int, batch: int, precision: str, isolate: bool = True, timeout: float = 900
) -> dict[str, Any]:
    """{"plain": ..., "grad_ckpt": ..., "reduction": ...}, both cases in one child process
    (`isolate=False`: in this process, quicker to start but its heap has a history)."""
    out: dict[str, Any] = {"model": model, "size": size, "batch": batch, "precision": precision}
    out["isolated"] = isolate
    if not isolate:
        out.update(measure_both(model, size, batch, precision))
        return with_reduction(out)
    cmd = [sys.executable, "-m", "benchmarks.bench_memory", "--model", model]
    cmd += ["--size", str(size), "--batch", str(batch), "--precision", precision]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return {**out, "error": tail[0]}
    out.update(json.loads(lines[-1]))
    return with_reduction(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unet_attn")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args(argv)
    print(json.dumps(measure_both(args.model, args.size, args.batch, args.precision)))


if __name__ == "__main__":
    main()
