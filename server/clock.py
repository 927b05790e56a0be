"""Time as the server uses it: monotonic for every duration, the wall clock only for what people see.

Leases, worker liveness, loans, the launch guard and back-offs measure durations on `mono()`, so
a step of the wall clock (NTP, an operator, a VM resume) expires, reaps or launches nothing.
Times stored or shown (enqueued_at, completed_at) come from `wall()`. Result expiry compares
stored wall times with `steady_wall()`, the wall clock as it was at start advanced by monotonic
time, so a step of the wall clock while running does not expire results early either.
"""

from __future__ import annotations

import time


class Clock:
    def __init__(self) -> None:
        self._wall0 = self.wall()
        self._mono0 = self.mono()

    def wall(self) -> float:
        return time.time()

    def mono(self) -> float:
        return time.monotonic()

    def steady_wall(self) -> float:
        return self._wall0 + (self.mono() - self._mono0)


SYSTEM_CLOCK = Clock()
