"""server.registry: who reported when, and what a worker says of itself (checked, else ignored)."""

from __future__ import annotations

import math

import pytest

from server.registry import MAX_RATE, Registry
from tests.unit.support import FakeClock


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_touch_records_first_and_last_seen():
    clock = Clock(100.0)
    registry = Registry(clock)
    info = registry.touch("w1")
    assert (info.worker_id, info.first_seen, info.last_seen, info.rate, info.busy) == ("w1", 100.0, 100.0, None, False)
    clock.now = 105.0
    again = registry.touch("w1")
    assert again is info and (info.first_seen, info.last_seen) == (100.0, 105.0)


def test_seen_within_silent_for_and_forget():
    clock = Clock(100.0)
    registry = Registry(clock)
    registry.touch("old")
    clock.now = 110.0
    registry.touch("new")
    clock.now = 115.0
    assert [w.worker_id for w in registry.seen_within(10.0)] == ["new"]
    assert [w.worker_id for w in registry.seen_within(15.0)] == ["old", "new"]  # the boundary counts as seen
    assert [w.worker_id for w in registry.silent_for(10.0)] == ["old"]
    assert registry.silent_for(20.0) == []
    registry.forget("old")
    registry.forget("never-seen")
    assert list(registry.workers) == ["new"]


def test_rate_is_the_median_of_known_rates_else_the_default():
    registry = Registry(Clock())
    assert registry.rate(default=5e6) == 5e6
    registry.touch("idle")  # no rate yet: not counted
    for worker, rate in (("a", 1e6), ("b", 3e6), ("c", 9e6)):
        registry.touch(worker, {"rate": rate})
    assert registry.rate(default=5e6) == 3e6
    registry.touch("d", {"rate": 5e6})
    assert registry.rate(default=1.0) == 4e6


def test_valid_stats_are_taken():
    registry = Registry(Clock())
    info = registry.touch("w", {"rate": 12345, "busy": True})
    assert (info.rate, info.busy) == (12345.0, True)
    assert isinstance(info.rate, float)
    registry.touch("w", {"busy": False})
    assert (info.rate, info.busy) == (12345.0, False)  # a missing rate keeps the last one


@pytest.mark.parametrize(
    "rate",
    [math.inf, -math.inf, math.nan, -1.0, 0, 0.0, MAX_RATE, MAX_RATE * 10, True, False, "5e6", None, [1.0], {"x": 1}],
)
def test_a_bad_rate_is_ignored(rate):
    registry = Registry(Clock())
    info = registry.touch("w", {"rate": 7.0})
    registry.touch("w", {"rate": rate, "busy": True})
    assert info.rate == 7.0
    assert info.busy is True  # the rest of the report still counts


@pytest.mark.parametrize("busy", [1, 0, "true", None, 1.0])
def test_busy_must_be_a_boolean(busy):
    registry = Registry(Clock())
    info = registry.touch("w", {"busy": True})
    registry.touch("w", {"busy": busy})
    assert info.busy is True


@pytest.mark.parametrize("stats", [None, [], "rate=5", 5, ["rate", 1.0]])
def test_stats_that_are_not_an_object_still_count_as_a_report(stats):
    clock = Clock(100.0)
    registry = Registry(clock)
    clock.now = 101.0
    info = registry.touch("w", stats)
    assert (info.last_seen, info.rate, info.busy) == (101.0, None, False)


def test_prune_forgets_workers_silent_for_long_and_returns_their_ids():
    clock = Clock(100.0)
    registry = Registry(clock)
    registry.touch("gone")
    clock.now = 150.0
    registry.touch("quiet")
    registry.touch("alive")
    clock.now = 200.0
    registry.touch("alive")
    assert registry.prune(60.0) == ["gone"]  # silent for 100 s
    assert registry.prune(60.0) == []
    assert list(registry.workers) == ["quiet", "alive"]
    assert registry.prune(50.0) == []  # exactly 50 s: still kept
    clock.now = 200.1
    assert registry.prune(50.0) == ["quiet"]
    registry.touch("quiet")  # a pruned worker that reports again starts afresh
    assert registry.workers["quiet"].first_seen == 200.1


def test_a_wall_clock_step_makes_no_worker_silent():
    clock = FakeClock()
    registry = Registry(clock.mono)  # as server.node wires it
    registry.touch("w1")
    for step in (3600.0, -7200.0):
        clock.step_wall(step)
        assert registry.silent_for(15.0) == [] and registry.prune(15.0) == []
    clock.advance(15.1)
    assert [w.worker_id for w in registry.silent_for(15.0)] == ["w1"]
