"""Run a preparation step on rank 0 first, then on the other ranks, failing all ranks together.

Under DDP a step like "train and cache the evaluation classifier" must run once (rank 0) before
the other ranks load its result. If rank 0 simply raised, the others would wait at the next
collective until the process group times out (30 minutes by default) with no hint why. Here
every rank always takes part in the same two collectives, so a failure anywhere is known to all
ranks at once and each raises a clear error naming the step and the rank that failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class RankSyncError(RuntimeError):
    """A step failed on some rank; raised on every rank."""


class Collectives(Protocol):
    """The part of a Lightning `Strategy` this module needs."""

    @property
    def is_global_zero(self) -> bool: ...

    def broadcast(self, obj: Any, src: int = 0) -> Any: ...

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool: ...


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def rank_zero_first(strategy: Collectives, step: Callable[[], T], what: str, hint: str = "") -> T:
    """``step()`` on rank 0; then, if it worked everywhere it ran, on every other rank.

    ``what`` names the step in errors ("preparing the evaluation classifier"), ``hint`` is added
    to the error of a rank that failed after rank 0 succeeded. Rank 0's error is
    broadcast, so all ranks raise `RankSyncError` together; an error on another rank (e.g. the
    file rank 0 wrote is not visible there) is agreed on with an all-reduce, for the same end.
    On a single process both collectives return at once.
    """
    result: T | None = None
    error: BaseException | None = None
    if strategy.is_global_zero:
        try:
            result = step()
        except Exception as exc:  # reported to every rank below, then re-raised here
            error = exc
    rank0_error = strategy.broadcast(None if error is None else _describe(error), src=0)
    if rank0_error is not None:
        message = f"Rank 0 failed while {what}: {rank0_error}. Every rank stops."
        raise RankSyncError(message) from error
    if not strategy.is_global_zero:
        try:
            result = step()
        except Exception as exc:
            error = exc
            log.error("This rank failed while %s: %s", what, _describe(exc))
    if not strategy.reduce_boolean_decision(error is None, all=True):
        where = "this rank" if error is not None else "another rank (see its log)"
        detail = f": {_describe(error)}" if error is not None else ""
        message = f"Failed on {where} while {what}{detail}. Every rank stops. {hint}"
        raise RankSyncError(message.rstrip()) from error
    return result  # type: ignore[return-value]  # set: no error on this rank
