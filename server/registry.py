"""What the server knows of workers: who reported when (monotonic), how fast they are, whether busy."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable


@dataclasses.dataclass
class WorkerInfo:
    worker_id: str
    first_seen: float
    last_seen: float
    rate: float | None = None  # cost units per second while busy, as the worker measures it
    busy: bool = False
    completed: int = 0  # results from this worker that were accepted (the first for their job)


#: no worker hashes anywhere near this many cost units per second; larger claims are ignored
MAX_RATE = 1e12


class Registry:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.workers: dict[str, WorkerInfo] = {}

    def touch(self, worker_id: str, stats: object = None) -> WorkerInfo:
        """Note that the worker reported now, with what it says of itself (checked: a rate must be
        a finite positive number below MAX_RATE, busy a boolean; anything else is ignored)."""
        now = self.clock()
        info = self.workers.get(worker_id)
        if info is None:
            info = self.workers[worker_id] = WorkerInfo(worker_id, now, now)
        info.last_seen = now
        if isinstance(stats, dict):
            rate = stats.get("rate")
            if isinstance(rate, int | float) and not isinstance(rate, bool) and 0 < rate < MAX_RATE:
                info.rate = float(rate)
            busy = stats.get("busy")
            if isinstance(busy, bool):
                info.busy = busy
        return info

    def credit(self, worker_id: str, completed: int) -> None:
        """Count results from the worker that were accepted."""
        info = self.workers.get(worker_id)
        if info is not None:
            info.completed += completed

    def seen_within(self, seconds: float) -> list[WorkerInfo]:
        cutoff = self.clock() - seconds
        return [w for w in self.workers.values() if w.last_seen >= cutoff]

    def silent_for(self, seconds: float) -> list[WorkerInfo]:
        cutoff = self.clock() - seconds
        return [w for w in self.workers.values() if w.last_seen < cutoff]

    def forget(self, worker_id: str) -> None:
        self.workers.pop(worker_id, None)

    def refresh_all(self) -> None:
        """Count every known worker as heard from now (after this process itself was paused)."""
        now = self.clock()
        for info in self.workers.values():
            info.last_seen = now

    def prune(self, silent_s: float) -> list[str]:
        """Forget workers silent for silent_s (whoever launched them); their ids."""
        gone = [w.worker_id for w in self.silent_for(silent_s)]
        for worker_id in gone:
            del self.workers[worker_id]
        return gone

    def rate(self, default: float) -> float:
        rates = [w.rate for w in self.workers.values() if w.rate]
        return statistics.median(rates) if rates else default
