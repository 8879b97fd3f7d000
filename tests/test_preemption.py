"""Preemption: a signal in training saves a resumable checkpoint and exits 128 + signal; a
checkpoint write killed half-way leaves the previous checkpoint intact."""

from __future__ import annotations

import io
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from test_resume import SignalAt, add_callbacks

from facediff.atomic import atomic_save
from facediff.checkpoint import load_checkpoint
from facediff.lightning.checkpoint_io import AtomicCheckpointIO
from facediff.lightning.preemption import Preempted, Preemption, as_preempted, parse_signals
from facediff.lightning.training import build_trainer, run

ROOT = Path(__file__).parents[1]
SHORT = ("trainer.max_epochs=-1", "callbacks.sample_grid=null")


def handlers() -> dict[int, object]:
    return {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}


def half_then_fail(real_save):
    """A torch.save that writes half of the file and then fails, like a kill mid-write."""

    def save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        with open(f, "wb") as out:  # facediff.atomic hands torch.save its temporary's path
            out.write(data[: len(data) // 2])
        raise OSError("simulated: killed while writing the checkpoint")

    return save


def train_until_a_checkpoint(
    tmp_path: Path, demo_cache: Path, run_name: str, *extra: str, **popen: object
) -> tuple[subprocess.Popen[str], Path, dict[str, str]]:
    """Start a tiny endless train.py and return once its `last.ckpt` exists (or it ended)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    args = [*TINY, *SHORT, f"paths.cache_dir={demo_cache}", "trainer.max_steps=100000",
            "+callbacks.model_checkpoint.every_n_train_steps=2", f"run_name={run_name}",
            *extra]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,  # type: ignore[call-overload]
    )
    last = tmp_path / f"outputs/demo/{run_name}/checkpoints/last.ckpt"  # experiment=demo's task
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    return proc, last, env


def test_sigusr1_saves_last_ckpt_and_exits_138_then_a_killed_write_keeps_it(tiny_cfg, monkeypatch):
    before = handlers()
    cfg = tiny_cfg(*SHORT, "trainer.max_steps=50")
    with monkeypatch.context() as patch:
        add_callbacks(patch, SignalAt(2, signal.SIGUSR1))
        with pytest.raises(Preempted) as stop:
            run(cfg)
    assert stop.value.code == 128 + signal.SIGUSR1 == 138
    assert "SIGUSR1 at step 2" in str(stop.value)
    assert handlers() == before  # the run's handlers are gone with it
    ckpt_dir = Path(cfg.paths.output_dir) / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    assert load_checkpoint(last)["global_step"] == 2

    # Resuming, the first checkpoint write is killed half-way: last.ckpt is still step 2.
    monkeypatch.setattr(torch, "save", half_then_fail(torch.save))
    with pytest.raises(OSError, match="simulated"):
        run(tiny_cfg(*SHORT, "trainer.max_steps=4", "ckpt_path=last"))
    assert load_checkpoint(last)["global_step"] == 2
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["last.ckpt"]  # no temporary litter


def test_sigterm_during_the_sanity_check_saves_at_the_first_step(tiny_cfg, monkeypatch):
    class SignalAtSanityCheck(Callback):
        def on_sanity_check_start(self, trainer, pl_module):
            os.kill(os.getpid(), signal.SIGTERM)

    cfg = tiny_cfg(*SHORT, "trainer.max_steps=50")
    add_callbacks(monkeypatch, SignalAtSanityCheck())
    with pytest.raises(Preempted) as stop:
        run(cfg)
    assert stop.value.code == 143 and stop.value.step == 1
    assert load_checkpoint(Path(cfg.paths.output_dir) / "checkpoints/last.ckpt")["global_step"] == 1


def test_train_py_killed_by_sigterm_exits_143_and_its_resume_command_resumes(tmp_path, demo_cache):
    proc, last, env = train_until_a_checkpoint(tmp_path, demo_cache, "night-run")
    proc.send_signal(signal.SIGTERM)  # training is under way: a checkpoint exists
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 143, output[-3000:]
    step = load_checkpoint(last)["global_step"]
    assert f"Training stopped by SIGTERM at step {step}: saved" in output, output[-3000:]
    command = shlex.split(output.split("Resume with: ", 1)[1].splitlines()[0])
    assert command[:2] == ["python", "train.py"] and command[-2:] == [
        "run_name=night-run",
        "ckpt_path=last",
    ]

    resume = [a.replace("max_steps=100000", f"max_steps={step + 1}") for a in command[2:]]
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *resume],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert load_checkpoint(last)["global_step"] == step + 1


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups and signals")
def test_sigterm_to_the_process_group_spares_the_loader_workers(tmp_path, demo_cache):
    """SLURM, `timeout` and `kill -- -PGID` signal every process of the job, data loader
    workers included: a worker killed by it made torch raise in the middle of the save (a
    lent H100's run lost its last.ckpt so, BENCHMARKS.md run 24). Workers outlive the signal
    and leave the stopping to the main process."""
    proc, last, _ = train_until_a_checkpoint(
        tmp_path, demo_cache, "group", "data.num_workers=1",
        start_new_session=True,  # its own process group, as under SLURM
    )  # fmt: skip
    os.killpg(proc.pid, signal.SIGTERM)  # the main process and its loader worker alike
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 143, output[-3000:]
    step = load_checkpoint(last)["global_step"]
    assert f"Training stopped by SIGTERM at step {step}: saved" in output, output[-3000:]
    assert "killed by signal" not in output


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_worker_leaves_a_while_after_sigterm_and_ignores_sigusr1():
    """In a loader worker SIGTERM starts a countdown (SIGALRM's default action ends it later,
    so a worker never outlives a main process that waits for it) and SIGUSR1 does nothing."""
    code = (
        "import os, signal\n"
        "from facediff.data.workers import defer_stop_signals, WORKER_GRACE_S\n"
        "defer_stop_signals(0)\n"
        "os.kill(os.getpid(), signal.SIGUSR1)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "left = signal.alarm(0)\n"
        "print(0 < left <= WORKER_GRACE_S, left)\n"
        "signal.alarm(1)\n"
        "signal.pause()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.startswith("True"), proc.stdout + proc.stderr
    assert proc.returncode == -signal.SIGALRM  # alive after both signals, ended by the alarm


def test_lightnings_sigterm_exit_becomes_preempted():
    stop = as_preempted(SIGTERMException(), step=7)
    assert stop.code == 143 and stop.step == 7 and stop.checkpoint is None
    assert "outside the training loop" in str(stop)


def test_signal_names_are_checked():
    assert parse_signals(["SIGTERM", "usr1", 2]) == [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT]
    with pytest.raises(ValueError, match="unknown signal 'SIGNOPE'"):
        Preemption("ckpts", signals=["SIGNOPE"])
    with pytest.raises(ValueError, match="cannot be caught"):
        parse_signals(["SIGKILL"])


def test_trainer_writes_checkpoints_atomically(tiny_cfg):
    trainer = build_trainer(tiny_cfg())
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_a_write_killed_half_way_leaves_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "checkpoints" / "last.ckpt"
    atomic_save({"step": 1}, target)
    assert torch.load(target, weights_only=True) == {"step": 1}
    monkeypatch.setattr(torch, "save", half_then_fail(torch.save))
    with pytest.raises(OSError, match="simulated"):
        atomic_save({"step": 2, "big": torch.zeros(10_000)}, target)
    assert torch.load(target, weights_only=True) == {"step": 1}
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]
    monkeypatch.undo()
    atomic_save({"step": 3}, target)
    assert torch.load(target, weights_only=True) == {"step": 3}
    assert oct(target.stat().st_mode & 0o777) == "0o644"
