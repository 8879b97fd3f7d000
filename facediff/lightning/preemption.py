"""Preemption: a signal during training saves a resumable checkpoint and exits non-zero.

Clusters stop jobs with SIGTERM (SLURM also sends SIGUSR1 ahead of time when asked to, e.g.
``#SBATCH --signal=USR1@120``). Lightning alone stops at the next batch on SIGTERM without
writing a checkpoint and then exits with status 0, so a killed run looks like a finished one.

`Preemption` takes over the configured signals while the training loop runs. A handler only
notes the signal (it is unsafe to save from inside a handler, which may interrupt an optimizer
step); at the next training batch end, after the EMA and every other callback have seen the
batch, all ranks agree to stop, `<run>/checkpoints/last.ckpt` is written (atomically, see
`facediff.lightning.checkpoint_io`) with the loop, optimizer, scheduler, EMA, RNG and data
position, and `Preempted` is raised. `Preempted` is a `SystemExit` with status 128 + signal
number (143 for SIGTERM, 138 for SIGUSR1), so it passes through Lightning and Hydra and the
process exits with it; train.py logs the command that resumes the run (`resume_command`).

A signal during validation is acted on at the next training batch (validation finishes first);
one that arrives when training has already finished stops the run without a new checkpoint
(the last one is final). Outside the training loop (data setup, sanity check, test), Lightning's
own SIGTERM handling stops the run; `facediff.lightning.training.run` turns it into `Preempted`.

Under SLURM with Lightning's auto-requeue (`SLURMEnvironment`, on by default there) SIGUSR1
already has Lightning's handler, which saves `<run>/hpc_ckpt_N.ckpt` and requeues the job: that
handler is kept, and `ckpt_path=last` picks the newer of it and `last.ckpt`
(`facediff.lightning.resume`).
"""

from __future__ import annotations

import logging
import shlex
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import Checkpoint

log = logging.getLogger(__name__)


class Preempted(SystemExit):
    """Training stopped by a signal. `code` (the exit status) is 128 + the signal number."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None, detail: str = "") -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint
        self.detail = detail

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        saved = f"saved {self.checkpoint}" if self.checkpoint is not None else "no new checkpoint"
        detail = f" {self.detail}" if self.detail else ""
        return f"Training stopped by {name} at step {self.step}: {saved}.{detail}"


def parse_signals(names: Sequence[str | int]) -> list[signal.Signals]:
    """`["SIGTERM", "USR1", 15]` -> signal.Signals; an unknown name is refused with the fix."""
    out = []
    for name in names:
        try:
            if isinstance(name, int):
                out.append(signal.Signals(name))
            else:
                upper = str(name).upper()
                out.append(signal.Signals[upper if upper.startswith("SIG") else f"SIG{upper}"])
        except (KeyError, ValueError):
            raise ValueError(
                f"callbacks.preemption.signals: unknown signal {name!r}. Use names such as "
                "SIGTERM and SIGUSR1 (see `kill -l`)."
            ) from None
        if out[-1] in (signal.SIGKILL, signal.SIGSTOP):
            raise ValueError(
                f"callbacks.preemption.signals: {out[-1].name} cannot be caught by any process; "
                "use SIGTERM or SIGUSR1."
            )
    return out


class Preemption(Checkpoint):
    """Save `dirpath/filename` and exit with 128 + signal when one of `signals` arrives.

    A `Checkpoint` subclass, so Lightning runs its batch-end hook after all other callbacks
    (the EMA update and the loss record of the batch are in the checkpoint).

    Args:
        dirpath: the run's checkpoint folder (`${paths.output_dir}/checkpoints`).
        filename: the checkpoint's name without `.ckpt`; `last` makes `ckpt_path=last` find it.
        signals: the signals to act on.
    """

    def __init__(
        self,
        dirpath: str | Path,
        filename: str = "last",
        signals: Sequence[str | int] = ("SIGTERM", "SIGUSR1"),
    ) -> None:
        if not filename or "/" in filename:
            raise ValueError(
                f"callbacks.preemption.filename must be a plain file name, got {filename!r}."
            )
        self.dirpath = Path(dirpath)
        self.filename = filename
        self.signals = parse_signals(signals)
        self.received: int | None = None
        self._trainer: L.Trainer | None = None
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def ckpt_path(self) -> Path:
        return self.dirpath / f"{self.filename}.ckpt"

    # ------------------------------------------------------------------------- handlers
    def _notice(self, signum: int, frame: FrameType | None) -> None:
        first = self.received is None
        self.received = signum
        if first:
            self._forward(signum)
            log.warning(
                "Received %s: saving %s at the end of this training batch, then stopping.",
                signal.Signals(signum).name,
                self.ckpt_path,
            )

    def _forward(self, signum: int) -> None:
        """Under DDP launched by Lightning, pass the signal on to the processes it started (as
        Lightning's own SIGTERM handler does)."""
        launcher = self._trainer.strategy.launcher if self._trainer is not None else None
        if launcher is not None:
            launcher.kill(signum)

    def _install(self) -> None:
        for sig in self.signals:
            current = signal.getsignal(sig)
            if sig == signal.SIGUSR1 and current not in (signal.SIG_DFL, signal.SIG_IGN, None):
                # Lightning's SLURM auto-requeue handler (or the user's): keep it.
                log.info("Keeping the existing %s handler (e.g. SLURM auto-requeue).", sig.name)
                continue
            self._previous[sig] = current
            signal.signal(sig, self._notice)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    # ------------------------------------------------------------------------ callbacks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._trainer = trainer
        # A SIGTERM during the sanity check reached only Lightning's handler: act on it now.
        self.received = signal.SIGTERM if trainer.received_sigterm else None
        if threading.current_thread() is threading.main_thread():  # signal.signal's rule
            self._install()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self._agreed_to_stop(trainer):
            return
        trainer.save_checkpoint(self.ckpt_path, weights_only=False)  # the full state: resumable
        self._restore()
        raise Preempted(self.received or signal.SIGTERM, trainer.global_step, self.ckpt_path)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stop = self._agreed_to_stop(trainer)
        self._restore()
        if stop:  # the signal came after the last batch: training is complete
            raise Preempted(
                self.received or signal.SIGTERM,
                trainer.global_step,
                None,
                "Training had already reached its end; its last checkpoint is final.",
            )

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore()

    def _agreed_to_stop(self, trainer: L.Trainer) -> bool:
        """Whether any rank received a signal (one collective per batch under DDP)."""
        return bool(trainer.strategy.reduce_boolean_decision(self.received is not None, all=False))


def resume_command(output_dir: str | Path, run_name: str | None) -> str:
    """The command line that resumes this run in its own folder.

    From Hydra's record of this job's overrides when there is one (train.py), with `ckpt_path`
    replaced by `last` and the run folder named by `run_name` (or `hydra.run.dir` for a
    multirun job or a folder not named after `run_name`).
    """
    output_dir = Path(output_dir)
    overrides: list[str] = ["..."]
    multirun = False
    run_dir_given = False
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        overrides = list(hydra_cfg.overrides.task)
        multirun = hydra_cfg.mode == RunMode.MULTIRUN
        run_dir_given = any(o.startswith("hydra.run.dir=") for o in hydra_cfg.overrides.hydra)
    kept = [o for o in overrides if not o.lstrip("+~").startswith(("ckpt_path=", "run_name="))]
    if run_name and output_dir.name == str(run_name) and not (multirun or run_dir_given):
        folder = f"run_name={run_name}"
    else:
        folder = f"hydra.run.dir={output_dir}"
    args = [*kept, folder, "ckpt_path=last"]
    return "python train.py " + " ".join(a if a == "..." else shlex.quote(a) for a in args)


def as_preempted(stop: BaseException, step: int) -> Preempted:
    """`stop` itself if it is `Preempted`; Lightning's `SIGTERMException` (a SIGTERM outside
    the training loop, which Lightning turns into exit status 0) as `Preempted`."""
    if isinstance(stop, Preempted):
        return stop
    return Preempted(
        signal.SIGTERM,
        step,
        None,
        "It came outside the training loop (setup, validation sanity check or test), where "
        "Lightning stops without a checkpoint; resume from the last one.",
    )
