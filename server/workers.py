"""What the server knows of workers: who reported when, how fast they are, whether busy."""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable


@dataclasses.dataclass
class WorkerInfo:
    worker_id: str
    first_seen: float
    last_seen: float
    rate: float | None = None  # cost units per second while busy, as the worker measures it
    busy: bool = False


class Registry:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.workers: dict[str, WorkerInfo] = {}

    def touch(self, worker_id: str, stats: dict | None = None) -> WorkerInfo:
        now = self.clock()
        info = self.workers.get(worker_id)
        if info is None:
            info = self.workers[worker_id] = WorkerInfo(worker_id, now, now)
        info.last_seen = now
        if stats:
            rate = stats.get("rate")
            if isinstance(rate, (int, float)) and rate > 0:
                info.rate = float(rate)
            if isinstance(stats.get("busy"), bool):
                info.busy = stats["busy"]
        return info

    def seen_within(self, seconds: float) -> list[WorkerInfo]:
        cutoff = self.clock() - seconds
        return [w for w in self.workers.values() if w.last_seen >= cutoff]

    def silent_for(self, seconds: float) -> list[WorkerInfo]:
        cutoff = self.clock() - seconds
        return [w for w in self.workers.values() if w.last_seen < cutoff]

    def forget(self, worker_id: str) -> None:
        self.workers.pop(worker_id, None)

    def rate(self, default: float) -> float:
        rates = [w.rate for w in self.workers.values() if w.rate]
        return statistics.median(rates) if rates else default
