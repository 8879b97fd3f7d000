"""What the machine offers, read once and decided in small pure functions (easy to test).

`precision: auto` on a CPU: bf16 autocast pays only where the CPU has native bf16 matrix units,
AMX (`amx_bf16`) or AVX512-BF16 (`avx512_bf16`). Without them oneDNN emulates bf16 with fp32
instructions plus conversions; measured on a Xeon with AVX-512 but neither flag, a 2048^3
matmul ran about 5x slower in bf16 than in fp32, and on an AVX2-only AMD EPYC whole training
steps ran 13x slower (BENCHMARKS.md). So those CPUs keep fp32.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

BF16_MATRIX_FLAGS = ("amx_bf16", "avx512_bf16")


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


def cpu_auto_precision(flags: Iterable[str]) -> tuple[str, str]:
    """(Lightning precision, reason) for `precision: auto` on a CPU with these flags."""
    have = [f for f in BF16_MATRIX_FLAGS if f in set(flags)]
    if have:
        return "bf16-mixed", f"the CPU has native bf16 matrix units ({', '.join(have)})"
    return "32-true", (
        "the CPU has no native bf16 matrix units (neither amx_bf16 nor avx512_bf16), where "
        "bf16 autocast is emulated and slower than fp32"
    )
