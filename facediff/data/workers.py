"""What a data loader worker does when a stop signal reaches it: it stays until the main process
has saved, and leaves later.

SLURM, `timeout` and `kill -- -PGID` signal every process of a job, the loader's workers
included. A worker killed by that SIGTERM made torch's SIGCHLD handler raise in the main process
in the middle of the preemption save, and the run lost its `last.ckpt` (BENCHMARKS.md, run 24).
So in a worker SIGUSR1 (SLURM's early warning, which the main process acts on) is ignored, and
SIGTERM only starts a countdown: `WORKER_GRACE_S` later SIGALRM's default action ends the
worker, unless it has left sooner by the loader's normal shutdown. The countdown keeps the
worker from outliving a main process that waits for it (torch's loader shutdown and Python's
exit both stop workers with SIGTERM and then wait for them). On Windows, which has neither
signal, workers keep the defaults.
"""

from __future__ import annotations

import signal
from types import FrameType

WORKER_GRACE_S = 120  # longer than a checkpoint save; SLURM kills the job after 30 s anyway


def _leave_later(signum: int, frame: FrameType | None) -> None:
    signal.alarm(WORKER_GRACE_S)  # SIGALRM's default action ends the process


def defer_stop_signals(worker_id: int) -> None:
    """A DataLoader `worker_init_fn`: SIGUSR1 ignored, SIGTERM ends the worker only after
    `WORKER_GRACE_S` seconds (the main process saves and stops in the meantime)."""
    if not (hasattr(signal, "SIGALRM") and hasattr(signal, "SIGUSR1")):
        return
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _leave_later)
