"""LaunchGuard: per-minute cap, back-off with jitter, suspension after repeated boot failures."""

from __future__ import annotations

import logging

from hypothesis import given, settings
from hypothesis import strategies as st

from server.launchers.base import LaunchError
from server.scaling.guard import LaunchGuard


def make(**kw) -> LaunchGuard:
    kw.setdefault("rng", lambda: 1.0)  # jitter factor 1.0: the full delay
    return LaunchGuard(clock=lambda: 0.0, **kw)


def test_allows_what_is_asked_within_the_cap():
    guard = make(max_per_minute=5)
    assert guard.allowed(3, 0.0) == 3
    guard.launched(3, 0.0)
    assert guard.allowed(3, 1.0) == 2
    guard.launched(2, 1.0)
    assert guard.allowed(1, 30.0) == 0
    assert guard.status()["state"] == "capped"
    assert guard.allowed(4, 60.5) == 3  # the first three left the window
    assert guard.allowed(0, 100.0) == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 5), st.integers(0, 10)), max_size=60), st.integers(1, 10))
def test_never_more_than_the_cap_in_any_minute(steps, cap):
    guard = make(max_per_minute=cap)
    now, history = 0.0, []
    for dt, want in steps:
        now += dt
        n = guard.allowed(want, now)
        assert 0 <= n <= want
        guard.launched(n, now)
        history.append((now, n))
        assert sum(k for t, k in history if t > now - 60.0) <= cap


def test_failures_back_off_exponentially_with_jitter_and_probe_one_at_a_time():
    guard = make(base_backoff_s=2.0, max_backoff_s=60.0)
    delays = []
    now = 0.0
    for _ in range(8):
        guard.failed(LaunchError("RequestLimitExceeded"), now)
        delays.append(guard.retry_at - now)
        assert guard.allowed(5, now + delays[-1] - 0.01) == 0
        assert guard.allowed(5, now + delays[-1]) == 1  # a single probe, not the whole batch
        now += delays[-1]
    assert delays == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    status = guard.status()
    assert status["state"] == "backoff" and status["failures"] == 8
    assert status["last_error"] == "RequestLimitExceeded"
    guard.succeeded(now)
    assert guard.allowed(5, now) == 5
    assert guard.status()["state"] == "ok"


def test_jitter_spreads_retries():
    draws = iter([0.0, 0.5, 1.0])
    guard = LaunchGuard(rng=lambda: next(draws), base_backoff_s=10.0)
    spread = []
    for _ in range(3):
        guard.failures = 0
        guard.failed(LaunchError("throttled"), 0.0)
        spread.append(guard.retry_at)
    assert spread == [5.0, 7.5, 10.0]


def test_non_retryable_failure_waits_the_longest():
    guard = make(base_backoff_s=2.0, max_backoff_s=300.0)
    guard.failed(LaunchError("UnauthorizedOperation", retryable=False), 0.0)
    assert guard.allowed(1, 299.0) == 0
    assert guard.allowed(1, 300.0) == 1


def test_boot_failures_suspend_launches_until_a_worker_boots(caplog):
    guard = make(max_boot_failures=3, probe_interval_s=600.0)
    guard.boot_failed(0.0)
    guard.boot_failed(0.0)
    assert guard.allowed(5, 0.0) == 5
    with caplog.at_level(logging.ERROR, logger="server.scaling.guard"):
        guard.boot_failed(1.0)
    assert "launches suspended" in caplog.text
    assert guard.allowed(5, 2.0) == 0
    status = guard.status()
    assert status["state"] == "suspended" and "never reported" in status["reason"]
    # one probe after the interval, then nothing until the next interval
    assert guard.allowed(5, 601.0) == 1
    guard.launched(1, 601.0)
    assert guard.allowed(5, 602.0) == 0
    guard.booted(700.0)
    assert guard.status()["state"] == "ok"
    assert guard.allowed(5, 700.0) == 5
