"""Rank-0-first preparation (the evaluation classifier under DDP): a failure on any rank makes
every rank raise together instead of leaving the others waiting at a collective."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from facediff.lightning.rank_sync import RankSyncError, rank_zero_first


class ThreadGroup:
    """Collectives among threads standing in for ranks, as Lightning's DDP strategy offers
    them. A rank missing from a collective breaks the barrier after `timeout` seconds, so a
    hang shows up as an error instead of a stuck test."""

    def __init__(self, world_size: int, timeout: float = 20.0) -> None:
        self.barrier = threading.Barrier(world_size, timeout=timeout)
        self.slots: list[Any] = [None] * world_size

    def rank(self, rank: int) -> RankStrategy:
        return RankStrategy(self, rank)


class RankStrategy:
    def __init__(self, group: ThreadGroup, rank: int) -> None:
        self.group, self.rank = group, rank

    @property
    def is_global_zero(self) -> bool:
        return self.rank == 0

    def _gather(self, value: Any) -> list[Any]:
        self.group.slots[self.rank] = value
        self.group.barrier.wait()
        values = list(self.group.slots)
        self.group.barrier.wait()  # nobody overwrites a slot before all have read
        return values

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return self._gather(obj)[src]

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        values = self._gather(bool(decision))
        return sum(values) == len(values) if all else any(values)


def _run_ranks(world: int, step: Callable[[int, list[str]], Any]) -> tuple[list[Any], list[str]]:
    """Run `rank_zero_first` on `world` thread-ranks; each rank's result or exception, and the
    order in which the ranks ran their step."""
    group, order = ThreadGroup(world), []
    outcomes: list[Any] = [None] * world

    def main(rank: int) -> None:
        try:
            outcomes[rank] = rank_zero_first(
                group.rank(rank), lambda: step(rank, order), "preparing the thing", "Fix: x."
            )
        except Exception as exc:
            outcomes[rank] = exc

    threads = [threading.Thread(target=main, args=(r,)) for r in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive(), "a rank is still waiting"
    return outcomes, order


def test_rank_zero_runs_first_then_the_others() -> None:
    def step(rank: int, order: list[str]) -> str:
        order.append(f"rank{rank}")
        return f"result{rank}"

    outcomes, order = _run_ranks(3, step)
    assert outcomes == ["result0", "result1", "result2"]
    assert order[0] == "rank0" and sorted(order[1:]) == ["rank1", "rank2"]


def test_a_failure_on_rank_zero_stops_every_rank_with_its_message() -> None:
    def step(rank: int, order: list[str]) -> str:
        order.append(f"rank{rank}")
        if rank == 0:
            raise OSError("disk full while saving classifier-abc.pt")
        return "loaded"

    outcomes, order = _run_ranks(2, step)
    assert order == ["rank0"]  # the others never tried to load a classifier that is not there
    for outcome in outcomes:
        assert isinstance(outcome, RankSyncError)
        assert "Rank 0 failed while preparing the thing" in str(outcome)
        assert "disk full while saving classifier-abc.pt" in str(outcome)
    assert isinstance(outcomes[0].__cause__, OSError)


def test_a_failure_on_another_rank_stops_rank_zero_too() -> None:
    def step(rank: int, order: list[str]) -> str:
        if rank == 1:
            raise FileNotFoundError("classifier-abc.pt")
        return "ok"

    outcomes, _ = _run_ranks(2, step)
    assert isinstance(outcomes[0], RankSyncError) and "another rank" in str(outcomes[0])
    assert isinstance(outcomes[1], RankSyncError) and "classifier-abc.pt" in str(outcomes[1])
    assert "Fix: x." in str(outcomes[1])


def test_single_process_strategy() -> None:
    from lightning.pytorch.strategies import SingleDeviceStrategy

    strategy = SingleDeviceStrategy("cpu")
    assert rank_zero_first(strategy, lambda: 7, "preparing") == 7
    with pytest.raises(RankSyncError, match="Rank 0 failed while preparing: ValueError: bad"):
        rank_zero_first(strategy, lambda: (_ for _ in ()).throw(ValueError("bad")), "preparing")
