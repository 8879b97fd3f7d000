"""What the machine offers, read once and decided in small functions (the rules pure, the reads and
the probe passed in or patched in tests).

`precision: auto` (training's `trainer.precision`, sampling's `precision`) on a CPU: bf16
autocast pays only where the CPU has native bf16 matrix units, AMX (`amx_bf16`) or AVX512-BF16
(`avx512_bf16`). Without them oneDNN emulates bf16 with fp32 instructions plus conversions;
measured on a Xeon with AVX-512 but neither flag, a 2048^3 matmul ran about 5x slower in bf16
than in fp32, and on an AVX2-only AMD EPYC whole training steps ran 13x slower (BENCHMARKS.md).
So those CPUs keep fp32. Where the units are there, bf16 is chosen only if a probe step
(`autocast_probe`, about a second) measures it faster.
"""

from __future__ import annotations

import hashlib
import logging
import os
import statistics
import time
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

BF16_MATRIX_FLAGS = ("amx_bf16", "avx512_bf16")
BF16_MARGIN = 0.9  # bf16 is chosen when its probe step takes under 90% of fp32's
CHOICE_ENV = "FACEDIFF_CPU_CHOICE"  # a process's CPU decision, for the processes it starts


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The `flags` of the first processor in /proc/cpuinfo (empty where there is no such file)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return "unknown CPU"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return "unknown CPU"


def autocast_probe(reps: int = 3) -> tuple[float, float]:
    """Median seconds of one small training step in fp32 and under bf16 autocast (forward and
    backward of two 64-channel 3x3 convolutions with GroupNorm and SiLU, batch 8 at 32x32),
    interleaved after a warm-up round: whether bf16 pays on this CPU, in about a second. It
    runs its own backward passes wherever it is called from, sampling's no_grad and Lightning's
    inference mode included."""
    import torch
    from torch import nn

    def step(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = net(x).float().square().mean()
        loss.backward()
        return time.perf_counter() - start

    with torch.inference_mode(False), torch.enable_grad():
        with torch.random.fork_rng(devices=[]):  # training's random stream stays as it was
            net = nn.Sequential(
                nn.Conv2d(64, 64, 3, padding=1), nn.GroupNorm(32, 64), nn.SiLU(),
                nn.Conv2d(64, 64, 3, padding=1),
            )  # fmt: skip
            x = torch.randn(8, 64, 32, 32)
        times: dict[bool, list[float]] = {False: [], True: []}
        for round_ in range(reps + 1):
            for bf16 in (False, True):
                seconds = step(bf16)
                if round_:  # round 0 warms up
                    times[bf16].append(seconds)
    return statistics.median(times[False]), statistics.median(times[True])


def cpu_auto_precision(
    flags: Iterable[str], probe: Callable[[], tuple[float, float]] | None = None
) -> tuple[str, str]:
    """(Lightning precision, reason) for `precision: auto` on a CPU with these flags.

    Without native bf16 matrix units: fp32, no probe. With them: bf16-mixed, unless `probe`
    (seconds of a step in fp32 and in bf16, e.g. `autocast_probe`) says bf16 is not faster.
    """
    have = [f for f in BF16_MATRIX_FLAGS if f in set(flags)]
    if not have:
        return "32-true", (
            "the CPU has no native bf16 matrix units (neither amx_bf16 nor avx512_bf16), where "
            "bf16 autocast is emulated and slower than fp32"
        )
    units = f"the CPU has native bf16 matrix units ({', '.join(have)})"
    if probe is None:
        return "bf16-mixed", units
    fp32_s, bf16_s = probe()
    measured = f"a probe step took {1e3 * fp32_s:.1f} ms in fp32, {1e3 * bf16_s:.1f} ms in bf16"
    if bf16_s < BF16_MARGIN * fp32_s:
        return "bf16-mixed", f"{units} and {measured}"
    return "32-true", f"{units}, but {measured}: bf16 is not at least 10% faster here"


def cpu_identity() -> str:
    """This CPU's model and a digest of its flags: whom a decision in `CHOICE_ENV` is for."""
    flags = hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:12]
    return f"{cpu_model()} [{flags}]"


@cache
def cpu_choice() -> tuple[str, str]:
    """`cpu_auto_precision` for this machine's CPU with its probe, decided once per process, so
    that training's and sampling's `precision: auto` agree and the probe runs once.

    The decision is left in the environment (`CHOICE_ENV`) for the processes this one starts:
    Lightning's DDP ranks re-run train.py, and each rank probing on its own could land on either
    side of the 10% margin, so the ranks of one CPU DDP run could train in different precisions.
    A process takes an inherited decision only on a CPU of the same model and flags: a process
    started on a machine with another CPU decides afresh."""
    identity, _, inherited = os.environ.get(CHOICE_ENV, "").partition("\t")
    choice, _, reason = inherited.partition("\t")
    if identity == cpu_identity() and choice in ("bf16-mixed", "32-true"):
        return choice, f"{reason} (decided by the process that started this one)"
    choice, reason = cpu_auto_precision(cpu_flags(), probe=autocast_probe)
    os.environ[CHOICE_ENV] = f"{cpu_identity()}\t{choice}\t{reason}"
    return choice, reason


def gpu_has_native_bf16(device: str = "cuda") -> bool:
    """Whether the CUDA `device` computes bf16 natively (compute capability 8+, Ampere and
    later); before that torch emulates it, slower than fp32, though `is_bf16_supported()`
    counts the emulation by default."""
    import torch

    return torch.cuda.get_device_capability(torch.device(device))[0] >= 8


@cache
def auto_sampling_precision(device: str) -> str:
    """The sampling precision that `precision: auto` stands for on `device` ("cpu", "cuda",
    "cuda:1", ...): bf16 on a GPU that computes it natively (Ampere and later: compute
    capability 8+; torch emulates it before, slower than fp32); on a CPU bf16 where training's
    rule chose bf16-mixed (`cpu_choice`); fp32 elsewhere. (Training's auto takes 16-mixed on
    every GPU: the GradScaler guards fp16 training, where sampling has nothing to guard.)
    Decided once per device and process, and logged with its reason."""
    import torch

    kind = torch.device(device).type
    if kind == "cuda" and gpu_has_native_bf16(device):
        choice, reason = "bf16", "the GPU computes bf16 natively"
    elif kind == "cuda":
        choice, reason = "fp32", "the GPU has no native bf16 (fp16 stays opt-in: precision=fp16)"
    elif kind == "cpu":
        mixed, reason = cpu_choice()
        choice = "bf16" if mixed == "bf16-mixed" else "fp32"
    else:
        choice, reason = "fp32", f"facediff has no low-precision rule for {kind!r}"
    log.info("sampling precision auto on %s: %s, because %s", device, choice, reason)
    return choice
