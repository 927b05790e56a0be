"""Matching the results a throughput bench pulls to the jobs it enqueued, whichever arrives first."""

from __future__ import annotations

import asyncio
from typing import Any

from client.loadgen.report import BenchReport


def reference_result(body: bytes, iterations: int) -> str:
    """The hex result a job must have (native.reference: hashlib). Imported here, not at the top,
    so that the CLI runs without the compiled native module unless --verify asks for this."""
    from native.reference import chain

    return chain(body, iterations).hex()


class ResultTracker:
    """Acknowledged jobs waiting for their result, and results pulled before (or without) an
    acknowledgement: the bench's own whose ack is still in flight, or someone else's (foreign)."""

    def __init__(self, report: BenchReport, verify: bool) -> None:
        self.report = report
        self.verify = verify
        self.acked: dict[str, tuple[float, bytes | None]] = {}  # ours, result not seen yet
        self.early: dict[str | None, tuple[float, Any]] = {}  # pulled, no ack (yet); None: no work id
        self.last_seen = 0.0
        self.last_ack = 0.0
        self.all_seen = asyncio.Event()

    def ack(self, work_id: str, at: float, body: bytes | None) -> None:
        """The server acknowledged this job at `at`; `body` is kept only to verify its result."""
        self.last_ack = at
        pulled = self.early.pop(work_id, None)
        if pulled is None:
            self.acked[work_id] = (at, body)
        else:
            self._seen(pulled[1], max(pulled[0] - at, 0.0), body, pulled[0])

    def pulled(self, items: list[Any], at: float) -> None:
        """Results that pullCompleted handed out at `at`."""
        for item in items:
            work_id = item.get("work_id") if isinstance(item, dict) else None
            if not isinstance(work_id, str):
                work_id = None
            mine = None if work_id is None else self.acked.pop(work_id, None)
            if mine is None:
                self.early[work_id] = (at, item)
            else:
                self._seen(item, at - mine[0], mine[1], at)

    def _seen(self, item: dict[str, Any], latency_s: float, body: bytes | None, at: float) -> None:
        report = self.report
        report.completed += 1
        report.latencies_s.append(latency_s)
        self.last_seen = max(self.last_seen, at)
        if item.get("result") is None:
            report.failed += 1
        elif self.verify and body is not None and item["result"] != reference_result(body, report.config.iterations):
            report.wrong += 1
        if report.completed >= report.config.jobs:
            self.all_seen.set()
