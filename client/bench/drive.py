"""The one load driver of the benchmark, for dynwork and the baseline alike.

It is the load generator's client (client.loadgen: its raw keep-alive HTTP/1.1 transport, its
`Enqueuer` with the one retry policy, its `ResultTracker`) with one addition the load generator
lacks: a body of its own size per job (`Bodies`), so that mixed-size workloads are the same
sequence on both sides. Jobs alternate between the servers (job i goes to server i mod n);
`concurrency` enqueue tasks share the jobs; one puller per server drains
`POST /pullCompleted?top=1000` until every job's result has been seen.

Figures (a loadgen `BenchReport`): `enqueue_s` runs from the first enqueue to the last
acknowledgement, `elapsed_s` to the last result pulled (end to end).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time

from client import loadgen
from client.loadgen.enqueue import Enqueuer
from client.loadgen.runners import pull_loop
from client.loadgen.tracker import ResultTracker
from common.http import HttpClient

POOL = 16  # distinct random buffers the bodies are cut from
PULL_TOP = 1000


class Bodies:
    """The bodies of one run: job i is `sizes[i]` bytes (all `low`, or uniform in [low, high] from
    `seed`), cut from a few random buffers made once, so the client spends nothing per job."""

    def __init__(self, jobs: int, low: int, high: int | None = None, seed: int = 1) -> None:
        rng = random.Random(seed)
        self.sizes = [low] * jobs if high is None else [rng.randint(low, high) for _ in range(jobs)]
        top = max(self.sizes, default=0)
        self.pool = [rng.randbytes(top) for _ in range(POOL)]

    def __len__(self) -> int:
        return len(self.sizes)

    def __call__(self, index: int) -> bytes:
        size, buffer = self.sizes[index], self.pool[index % POOL]
        return buffer if size == len(buffer) else buffer[:size]

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes)

    @property
    def mean_bytes(self) -> int:
        return self.total_bytes // max(len(self.sizes), 1)


class _Feed:
    """The enqueue side of a run: tasks share the job indexes; each acknowledgement is tracked."""

    def __init__(self, enqueuer: Enqueuer, bodies: Bodies, tracker: ResultTracker, pull: bool) -> None:
        self.enqueuer, self.bodies, self.tracker, self.pull = enqueuer, bodies, tracker, pull
        self.indexes = itertools.count()
        self.acked = 0

    async def loop(self) -> None:
        latencies = self.tracker.report.enqueue_latencies_s
        for index in self.indexes:
            if index >= len(self.bodies):
                return
            body = self.bodies(index)
            sent = time.perf_counter()
            work_id = (await self.enqueuer.put(index, body)).work_id
            at = time.perf_counter()
            latencies.append(at - sent)
            self.acked += 1
            if self.pull:
                self.tracker.ack(work_id, at, None)
            else:
                self.tracker.last_ack = at


async def run_load(
    servers: tuple[str, ...],
    bodies: Bodies,
    *,
    iterations: int = 1,
    concurrency: int = 64,
    pull: bool = True,
    timeout_s: float = 600.0,
) -> tuple[loadgen.BenchReport, float]:
    """Enqueue every body (and, with `pull`, collect every result): the report, which says how far
    it got, and the time.perf_counter() its clock started at (the first enqueue)."""
    cfg = loadgen.BenchConfig(
        servers, jobs=len(bodies), iterations=iterations, body_bytes=bodies.mean_bytes, concurrency=concurrency
    )
    report = loadgen.BenchReport("throughput", cfg)
    tracker = ResultTracker(report, verify=False)
    transport = loadgen.make_transport(cfg, concurrency + 2 * len(servers))
    try:
        clients = [HttpClient(url, transport, timeout_s=cfg.http_timeout_s) for url in servers]
        feed = _Feed(Enqueuer(clients, iterations), bodies, tracker, pull)
        start = time.perf_counter()
        pullers = [asyncio.create_task(pull_loop(c, tracker, cfg.pull_interval_s)) for c in clients] if pull else []
        enqueuers = [asyncio.create_task(feed.loop()) for _ in range(min(concurrency, cfg.jobs))]
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*enqueuers)
                if pull:
                    await tracker.all_seen.wait()
        except TimeoutError:
            report.error, report.error_kind = f"timed out after {timeout_s:g} s", "timeout"
        except loadgen.BenchError as exc:
            report.error, report.error_kind = str(exc), exc.kind
        finally:
            for task in pullers + enqueuers:
                task.cancel()
            await asyncio.gather(*pullers, *enqueuers, return_exceptions=True)
        report.enqueue_retries = feed.enqueuer.retries
        report.enqueue_s = max(tracker.last_ack - start, 0.0)
        if pull:
            report.elapsed_s = max(tracker.last_seen - start, 0.0)
            report.foreign = len(tracker.early)
        else:
            report.completed, report.elapsed_s = feed.acked, report.enqueue_s
    finally:
        await transport.close()
    return report, start


def _ms(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 2)


def summary(report: loadgen.BenchReport, total_bytes: int) -> dict[str, float | int | bool | str | None]:
    """The figures of one driven run, rounded, for printing and --json."""
    enqueue_s, elapsed_s = report.enqueue_s, report.elapsed_s
    lat = loadgen.latency_summary(report.latencies_s)
    enq = loadgen.latency_summary(report.enqueue_latencies_s)
    return {
        "jobs": report.config.jobs,
        "completed": report.completed,
        "ok": report.ok,
        "error": report.error,
        "enqueue_jobs_per_s": round(report.config.jobs / enqueue_s, 1) if enqueue_s else 0.0,
        "enqueue_mb_per_s": round(total_bytes / enqueue_s / 1e6, 1) if enqueue_s else 0.0,
        "end_to_end_jobs_per_s": round(report.jobs_per_s, 1),
        "end_to_end_mb_per_s": round(total_bytes / elapsed_s / 1e6, 1) if elapsed_s else 0.0,
        "enqueue_s": round(enqueue_s, 3),
        "elapsed_s": round(elapsed_s, 3),
        "enqueue_retries": report.enqueue_retries,
        "enqueue_ms_p50": _ms(enq["p50"]),
        "enqueue_ms_p99": _ms(enq["p99"]),
        "ack_to_pulled_ms_p50": _ms(lat["p50"]),
        "ack_to_pulled_ms_p99": _ms(lat["p99"]),
    }
