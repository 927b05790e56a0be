"""The launch guard: whatever the policy asks for, launches never storm.

Three brakes, each visible in GET /status:

- a cap on launches per rolling minute;
- exponential back-off with jitter after a failed launch call (capacity, limits, throttling,
  auth); while failures continue, one launch at a time probes whether the cloud has recovered;
- a template that keeps producing workers that never report is suspended after
  `max_boot_failures` consecutive boot failures: no more launches except one probe every
  `probe_interval_s`, until a worker boots again.

Times are whatever clock the caller passes as `now` (the autoscaler passes time.monotonic()); the
`clock` is only used where a method is called without one.
"""

from __future__ import annotations

import collections
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from server.launchers.base import LaunchError

log = logging.getLogger(__name__)

WINDOW_S = 60.0


class LaunchGuard:
    def __init__(
        self,
        max_per_minute: int = 20,
        clock: Callable[[], float] | None = None,
        rng: Callable[[], float] | None = None,
        *,
        base_backoff_s: float = 2.0,
        max_backoff_s: float = 300.0,
        max_boot_failures: int = 3,
        probe_interval_s: float = 600.0,
    ) -> None:
        if max_per_minute < 1:
            raise ValueError("max_per_minute must be >= 1")
        self.max_per_minute = max_per_minute
        self.clock = clock or time.monotonic
        self.rng = rng or random.random
        self.base_backoff_s = base_backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_boot_failures = max_boot_failures
        self.probe_interval_s = probe_interval_s
        self._recent: collections.deque[tuple[float, int]] = collections.deque()  # (when, count)
        self.failures = 0  # consecutive failed launch calls
        self.retry_at = 0.0  # no launch before this while backing off
        self.last_error: str | None = None
        self.boot_failures = 0  # consecutive launched workers that never reported
        self.suspended = False
        self.probe_at = 0.0
        self.launched_total = 0
        self._now = 0.0  # the latest time a caller told us, for status()

    def _time(self, now: float | None) -> float:
        now = self.clock() if now is None else now
        self._now = max(self._now, now)
        return now

    def _launched_last_minute(self, now: float) -> int:
        while self._recent and self._recent[0][0] <= now - WINDOW_S:
            self._recent.popleft()
        return sum(n for _, n in self._recent)

    # -- the question the autoscaler asks --------------------------------------------------
    def allowed(self, n: int, now: float | None = None) -> int:
        """How many of the `n` launches the policy wants may start now."""
        now = self._time(now)
        if n <= 0:
            return 0
        if self.suspended:
            if now < self.probe_at:
                return 0
            n = 1
        if self.failures:
            if now < self.retry_at:
                return 0
            n = 1  # probe: one launch until a call succeeds again
        return max(0, min(n, self.max_per_minute - self._launched_last_minute(now)))

    # -- what happened -----------------------------------------------------------------------
    def launched(self, n: int, now: float | None = None) -> None:
        now = self._time(now)
        if n > 0:
            self._recent.append((now, n))
            self.launched_total += n
            if self.suspended:
                self.probe_at = now + self.probe_interval_s

    def failed(self, exc: LaunchError, now: float | None = None) -> None:
        now = self._time(now)
        self.failures += 1
        self.last_error = str(exc)
        if getattr(exc, "retryable", True):
            delay = min(self.max_backoff_s, self.base_backoff_s * 2 ** (self.failures - 1))
        else:
            delay = self.max_backoff_s  # auth, bad template: retrying soon cannot help
        delay *= 0.5 + 0.5 * self.rng()  # jitter, so two servers do not retry in step
        self.retry_at = now + delay
        log.warning(
            "launch failed (%d in a row%s): %s; next attempt in %.1fs",
            self.failures,
            "" if getattr(exc, "retryable", True) else ", not retryable",
            exc,
            delay,
        )

    def succeeded(self, now: float | None = None) -> None:
        self._time(now)
        if self.failures:
            log.info("launching works again after %d failure(s)", self.failures)
        self.failures = 0
        self.retry_at = 0.0

    def booted(self, now: float | None = None) -> None:
        self._time(now)
        self.boot_failures = 0
        if self.suspended:
            self.suspended = False
            log.warning("a launched worker reported; launches resume")

    def boot_failed(self, now: float | None = None) -> None:
        now = self._time(now)
        self.boot_failures += 1
        if self.boot_failures >= self.max_boot_failures and not self.suspended:
            self.suspended = True
            self.probe_at = now + self.probe_interval_s
            log.error(
                "launches suspended: %d launched workers in a row never reported; check the "
                "launch template, image and network (one probe launch every %.0fs)",
                self.boot_failures,
                self.probe_interval_s,
            )

    # -- reporting -----------------------------------------------------------------------------
    @property
    def state(self) -> str:
        if self.suspended:
            return "suspended"
        if self.failures:
            return "backoff"
        if self._launched_last_minute(self._now) >= self.max_per_minute:
            return "capped"
        return "ok"

    def status(self) -> dict[str, Any]:
        now = self._now
        status = {
            "state": self.state,
            "launches_last_minute": self._launched_last_minute(now),
            "max_per_minute": self.max_per_minute,
            "launched_total": self.launched_total,
            "failures": self.failures,
            "boot_failures": self.boot_failures,
            "last_error": self.last_error,
        }
        if self.failures:
            status["retry_in_s"] = round(max(0.0, self.retry_at - now), 1)
        if self.suspended:
            status["reason"] = f"{self.boot_failures} launched workers in a row never reported"
            status["probe_in_s"] = round(max(0.0, self.probe_at - now), 1)
        return status
