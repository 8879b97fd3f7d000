"""A mistake is reported as its message: unreadable checkpoints, and the entry points' exit."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from facediff.checkpoint import CheckpointError, load_checkpoint
from facediff.cli import reported_errors

ROOT = Path(__file__).parents[1]


class RunsCode:
    """Unpickling this calls `Path.touch` on a victim file."""

    def __init__(self, victim: Path) -> None:
        self.victim = victim

    def __reduce__(self):
        return (Path.touch, (self.victim,))


def test_a_pickle_that_runs_code_is_refused_unread_and_the_refusal_gives_no_unsafe_advice(
    tmp_path,
):
    victim = tmp_path / "victim"
    torch.save({"state_dict": RunsCode(victim)}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="refused unread") as err:
        load_checkpoint(tmp_path / "evil.ckpt")
    assert not victim.exists()
    assert "weights_only" not in str(err.value) and "file an issue" not in str(err.value)


def test_a_folder_or_a_non_checkpoint_file_is_named_as_such(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04")
    with pytest.raises(CheckpointError, match=r"is a folder.*found under it: .*last\.ckpt"):
        load_checkpoint(run)
    (tmp_path / "grid.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(CheckpointError, match=r"not a checkpoint file.*starts with b'\\x89PNG'"):
        load_checkpoint(tmp_path / "grid.png")


def test_reported_errors_logs_the_message_and_exits_1(caplog, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    @reported_errors
    def job() -> None:
        raise ValueError("steps=0: must be an integer >= 1")

    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_:
        job()
    assert exit_.value.code == 1
    assert "steps=0: must be an integer >= 1" in caplog.text and "HYDRA_FULL_ERROR" in caplog.text
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ValueError, match="steps=0"):  # the traceback, when asked for
        job()

    @reported_errors
    def bug() -> None:
        raise KeyError("a bug, not a mistake of the user's")

    with pytest.raises(KeyError):
        bug()


def test_sample_py_prints_every_bad_value_without_a_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "sample.py", f"ckpt={tmp_path / 'missing.ckpt'}", f"out={tmp_path / 'o'}",
         "sampler=euler", "n_per_class=0", "guidance=-1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    assert "Traceback" not in text
    for line in ("sampler='euler'", "n_per_class=0", "guidance=-1"):
        assert line in text
