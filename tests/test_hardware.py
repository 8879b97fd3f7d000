"""precision: auto on a CPU, decided from the CPU's flags and, where they allow bf16, a probe."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

import facediff.hardware as hardware
import facediff.lightning.training as training
from facediff.hardware import autocast_probe, cpu_auto_precision, cpu_flags, cpu_model

XEON_NO_BF16 = "fpu sse avx2 fma avx512f avx512bw avx512_vnni"
SAPPHIRE_RAPIDS = XEON_NO_BF16 + " avx512_bf16 amx_tile amx_bf16 amx_int8"
COOPER_LAKE = XEON_NO_BF16 + " avx512_bf16"
EPYC_AVX2 = "fpu sse avx avx2 fma"


@pytest.fixture
def fresh_choice():
    """`precision: auto` is decided once per process (`cpu_choice`, `auto_sampling_precision`):
    forget the decisions around a test (conftest's autouse fixture clears the inherited one)."""
    for decided in (hardware.cpu_choice, hardware.auto_sampling_precision):
        decided.cache_clear()
    yield
    for decided in (hardware.cpu_choice, hardware.auto_sampling_precision):
        decided.cache_clear()


@pytest.fixture
def fake_cpu(monkeypatch: pytest.MonkeyPatch, fresh_choice: None):
    """Pretend to be a CPU with `flags` whose probe step takes `probe` = (fp32 s, bf16 s)."""

    def pretend(flags: str, probe: tuple[float, float] = (0.010, 0.004)) -> None:
        monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags.split()))
        monkeypatch.setattr(hardware, "autocast_probe", lambda: probe)

    return pretend


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (SAPPHIRE_RAPIDS, "bf16-mixed"),
        (COOPER_LAKE, "bf16-mixed"),
        (XEON_NO_BF16, "32-true"),
        (EPYC_AVX2, "32-true"),
        ("amx_tile amx_int8", "32-true"),  # AMX without its bf16 part
        ("", "32-true"),
    ],
)
def test_cpu_auto_precision(flags: str, expected: str) -> None:
    precision, reason = cpu_auto_precision(flags.split())
    assert precision == expected
    assert ("native bf16" in reason) and (("no native" in reason) == (expected == "32-true"))


def test_cpu_flags_and_model_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: Test Xeon\nflags\t\t: fpu avx512f amx_bf16\n\n"
        "processor\t: 1\nmodel name\t: Test Xeon\nflags\t\t: fpu avx512f amx_bf16\n"
    )
    assert cpu_flags(info) == {"fpu", "avx512f", "amx_bf16"}
    assert cpu_model(info) == "Test Xeon"
    assert cpu_flags(tmp_path / "missing") == frozenset()
    assert cpu_model(tmp_path / "missing") == "unknown CPU"


@pytest.mark.parametrize(
    ("flags", "expected"), [(SAPPHIRE_RAPIDS, "bf16-mixed"), (EPYC_AVX2, "32-true")]
)
def test_resolve_precision_auto_on_cpu_logs_choice(
    flags: str,
    expected: str,
    caplog: pytest.LogCaptureFixture,
    fake_cpu: Callable[..., None],
) -> None:
    fake_cpu(flags, (0.010, 0.004))  # bf16 2.5x faster
    with caplog.at_level(logging.INFO, logger="facediff.lightning.training"):
        assert training.resolve_precision("auto", "cpu") == expected
    assert expected in caplog.text and "native bf16" in caplog.text
    assert training.resolve_precision("32-true", "cpu") == "32-true"  # explicit wins
    assert training.resolve_precision("auto", "gpu") == "16-mixed"


def test_bf16_needs_the_units_and_a_faster_probe() -> None:
    def never() -> tuple[float, float]:
        raise AssertionError("no probe without native bf16 units")

    assert cpu_auto_precision(EPYC_AVX2.split(), probe=never)[0] == "32-true"
    precision, reason = cpu_auto_precision(SAPPHIRE_RAPIDS.split(), probe=lambda: (0.010, 0.004))
    assert precision == "bf16-mixed" and "10.0 ms in fp32, 4.0 ms in bf16" in reason
    precision, reason = cpu_auto_precision(COOPER_LAKE.split(), probe=lambda: (0.010, 0.0095))
    assert precision == "32-true" and "not at least 10% faster" in reason  # 5% is noise


def test_autocast_probe_times_both_precisions() -> None:
    import torch

    state = torch.get_rng_state()  # it runs after seed_everything: training's stream is untouched
    fp32_s, bf16_s = autocast_probe(reps=1)
    assert 0 < fp32_s < 10 and 0 < bf16_s < 10
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_autocast_probe_runs_where_sampling_runs(mode: str) -> None:
    """Sampling (no_grad) and Lightning's validation (inference mode) may be the first to ask
    for `precision: auto`: the probe's backward passes must run there too."""
    import torch

    with getattr(torch, mode)():
        fp32_s, bf16_s = autocast_probe(reps=1)
        assert not torch.is_grad_enabled()  # and the caller's mode is back afterwards
    assert fp32_s > 0 and bf16_s > 0


def test_started_processes_inherit_the_decision_on_the_same_cpu(
    fake_cpu: Callable[..., None],
) -> None:
    """A DDP rank (a process started by the one that decided) takes its starter's decision
    from the environment instead of probing, unless it runs on another kind of CPU."""
    fake_cpu(SAPPHIRE_RAPIDS, (0.010, 0.004))  # bf16 2.5x faster
    assert hardware.cpu_choice()[0] == "bf16-mixed"
    hardware.cpu_choice.cache_clear()  # as in a new process with the same environment
    fake_cpu(SAPPHIRE_RAPIDS, (0.010, 0.0095))  # its own probe would say fp32
    choice, reason = hardware.cpu_choice()
    assert choice == "bf16-mixed" and "decided by the process that started this one" in reason
    hardware.cpu_choice.cache_clear()
    fake_cpu(EPYC_AVX2)  # another machine: decides afresh
    assert hardware.cpu_choice()[0] == "32-true"


@pytest.mark.parametrize(
    ("flags", "probe", "expected"),
    [
        (SAPPHIRE_RAPIDS, (0.010, 0.004), "bf16"),
        (SAPPHIRE_RAPIDS, (0.010, 0.0095), "fp32"),  # the units are there, bf16 not faster
        (EPYC_AVX2, (0.010, 0.004), "fp32"),  # no units: no probe, fp32
    ],
)
def test_sampling_precision_auto_on_cpu_follows_the_training_rule(
    flags: str,
    probe: tuple[float, float],
    expected: str,
    caplog: pytest.LogCaptureFixture,
    fake_cpu: Callable[..., None],
) -> None:
    import torch

    from facediff.diffusion.sampling import network_precision, sampling_precision

    fake_cpu(flags, probe)
    cpu = torch.device("cpu")
    with caplog.at_level(logging.INFO, logger="facediff.hardware"):
        assert sampling_precision("auto", cpu) == expected
    assert f"sampling precision auto on cpu: {expected}, because" in caplog.text
    for explicit in ("fp32", "bf16", "fp16"):
        assert sampling_precision(explicit, cpu) == explicit  # explicit wins, no probe
    with network_precision("auto", cpu):
        dtype = torch.nn.Conv2d(1, 1, 1)(torch.ones(1, 1, 1, 1)).dtype
    assert dtype == (torch.bfloat16 if expected == "bf16" else torch.float32)


def test_sampling_precision_auto_is_decided_once(
    monkeypatch: pytest.MonkeyPatch, fresh_choice: None
) -> None:
    calls = []
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(SAPPHIRE_RAPIDS.split()))
    monkeypatch.setattr(hardware, "autocast_probe", lambda: calls.append(1) or (0.010, 0.004))
    assert [hardware.auto_sampling_precision("cpu") for _ in range(3)] == ["bf16"] * 3
    assert training.resolve_precision("auto", "cpu") == "bf16-mixed"  # training agrees
    assert len(calls) == 1  # one probe per process, for training and every sampling step
    assert hardware.auto_sampling_precision("mps") == "fp32"


@pytest.mark.parametrize(("major", "expected"), [(9, "bf16"), (8, "bf16"), (7, "fp32")])
def test_sampling_precision_auto_on_a_gpu_needs_native_bf16(
    major: int, expected: str, monkeypatch: pytest.MonkeyPatch, fresh_choice: None
) -> None:
    """Before Ampere (compute capability 8) torch emulates bf16, slower than fp32: auto asks the
    device it samples on, not the current one."""
    import torch

    asked = []
    monkeypatch.setattr(
        torch.cuda, "get_device_capability", lambda d: asked.append(d) or (major, 0)
    )
    assert hardware.auto_sampling_precision("cuda:1") == expected
    assert asked == [torch.device("cuda:1")]
