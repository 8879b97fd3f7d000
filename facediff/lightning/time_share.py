"""Keep a training-time callback's own work under a share of the run's wall time.

Figures and metrics are counted in epochs, so on a small data set (short epochs) they would
take most of a run, and on a large one hardly any. `TimeShare` lets a callback run at its
cadence only while its total cost, including the next call estimated by the last one, stays
under `share` of the wall time since the run started.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class TimeShare:
    """The running cost of one callback against `share` of the elapsed wall time.

    `share=None` means no limit (the callback runs at every cadence point).
    """

    def __init__(self, share: float | None, clock: Callable[[], float] = time.perf_counter) -> None:
        if share is not None and not 0.0 < share <= 1.0:
            raise ValueError(f"max_time_share must be in (0, 1] or null (no limit), got {share}.")
        self.share = share
        self.clock = clock
        self.started: float | None = None
        self.spent = 0.0  # seconds of this callback's own work so far
        self.last_cost = 0.0  # seconds of its last call: the estimate of the next one
        self.calls = 0
        self.skipped = 0

    def start(self) -> None:
        """Start the run's clock (once; later calls keep the first start)."""
        if self.started is None:
            self.started = self.clock()

    @property
    def elapsed(self) -> float:
        return 0.0 if self.started is None else self.clock() - self.started

    def allows(self) -> bool:
        """Whether one more call (costing about as much as the last) stays within the share."""
        if self.share is None:
            return True
        return self.spent + self.last_cost <= self.share * self.elapsed

    @contextmanager
    def charge(self, one_off: bool = False) -> Iterator[None]:
        """Time the enclosed work and add it to this callback's cost. `one_off` work (a set-up)
        counts in the cost but is no estimate of the next call."""
        self.start()
        begin = self.clock()
        try:
            yield
        finally:
            cost = self.clock() - begin
            self.spent += cost
            if not one_off:
                self.last_cost = cost
                self.calls += 1

    def summary(self) -> str:
        share = self.spent / self.elapsed if self.elapsed > 0 else 0.0
        limit = "no limit" if self.share is None else f"limit {self.share:.0%}"
        return (
            f"{self.calls} calls, {self.skipped} skipped, {self.spent:.1f} s of "
            f"{self.elapsed:.1f} s wall time ({share:.1%}, {limit})"
        )
