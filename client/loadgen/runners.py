"""The two bench modes: throughput (enqueue and pull side by side) and latency (one job at a time)."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from typing import Any

from client.loadgen.config import BenchConfig
from client.loadgen.enqueue import BenchError, Enqueuer, NoServer
from client.loadgen.report import BenchReport
from client.loadgen.tracker import ResultTracker, reference_result
from client.loadgen.transports import make_transport
from common.http import HttpClient, HttpError, Transport, Unavailable

PULL_TOP = 1000
PULL_IDLE_GRACE = 5  # empty pulls in a row at the plain interval before the pause starts doubling
PULL_IDLE_MAX_S = 0.25  # the longest pause after empty pulls (a result waits at most this long)
WAIT_CHUNK_S = 5.0  # latency mode: one long-poll lasts at most this long


def _clients(cfg: BenchConfig, transport: Transport) -> list[HttpClient]:
    return [HttpClient(url, transport, timeout_s=cfg.http_timeout_s) for url in cfg.servers]


def _timed_out(cfg: BenchConfig, report: BenchReport) -> None:
    report.error = f"timed out after {cfg.timeout_s:g} s with {report.completed}/{cfg.jobs} results"
    report.error_kind = "timeout"


# -- throughput ------------------------------------------------------------------------------------


async def pull_loop(client: HttpClient, tracker: ResultTracker, interval_s: float) -> None:
    """Drains one server's pullCompleted until every job of the run has been seen (the load
    generator and the benchmark both use it)."""
    target = f"/pullCompleted?top={PULL_TOP}"
    failures = 0
    empty_pulls = 0  # in a row
    while not tracker.all_seen.is_set():
        try:
            items = (await client.call("POST", target, idempotent=False)).json()
        except HttpError:
            items = None
        if not isinstance(items, list):
            # A server that is down is skipped: its peer's pullCompleted fills from it once it is back.
            failures += 1
            await asyncio.sleep(min(max(interval_s, 0.005) * 2**failures, 0.5))
            continue
        failures = 0
        tracker.pulled(items, time.perf_counter())
        # Past a short gap, empty pulls back off: each costs both servers a peer round trip, taken
        # from the workers when they share the host. A pull that brought results resets the pause.
        empty_pulls = 0 if items else empty_pulls + 1
        backoff = 2 ** max(0, empty_pulls - PULL_IDLE_GRACE)
        if len(items) < PULL_TOP:
            await asyncio.sleep(min(interval_s * backoff, max(PULL_IDLE_MAX_S, interval_s)))


async def _enqueue_loop(
    enqueuer: Enqueuer, counter: itertools.count[int], cfg: BenchConfig, tracker: ResultTracker
) -> None:
    for index in counter:
        if index >= cfg.jobs:
            return
        body = os.urandom(cfg.body_bytes)
        sent = time.perf_counter()
        work_id = (await enqueuer.put(index, body)).work_id
        acked = time.perf_counter()
        tracker.report.enqueue_latencies_s.append(acked - sent)
        tracker.ack(work_id, acked, body if cfg.verify else None)


async def run_throughput(cfg: BenchConfig) -> BenchReport:
    report = BenchReport("throughput", cfg)
    tracker = ResultTracker(report, cfg.verify)
    counter = itertools.count()
    transport = make_transport(cfg, cfg.concurrency + 2 * len(cfg.servers))
    try:
        clients = _clients(cfg, transport)
        enqueuer = Enqueuer(clients, cfg.iterations)
        start = time.perf_counter()
        pullers = [asyncio.create_task(pull_loop(client, tracker, cfg.pull_interval_s)) for client in clients]
        enqueuers = [
            asyncio.create_task(_enqueue_loop(enqueuer, counter, cfg, tracker))
            for _ in range(min(cfg.concurrency, cfg.jobs))
        ]
        try:
            async with asyncio.timeout(cfg.timeout_s):
                await asyncio.gather(*enqueuers)
                await tracker.all_seen.wait()
        except TimeoutError:
            _timed_out(cfg, report)
        except BenchError as exc:
            report.error, report.error_kind = str(exc), exc.kind
        finally:
            for task in pullers + enqueuers:
                task.cancel()
            await asyncio.gather(*pullers, *enqueuers, return_exceptions=True)
        report.enqueue_retries = enqueuer.retries
        report.enqueue_s = max(tracker.last_ack - start, 0.0)
        report.elapsed_s = max(tracker.last_seen - start, 0.0)
        # Results pulled without an acknowledgement of ours are someone else's.
        report.foreign = len(tracker.early)
    finally:
        await transport.close()
    return report


# -- latency -----------------------------------------------------------------------------------------


async def _wait_finished(client: HttpClient, work_id: str) -> dict[str, Any]:
    """Long-polls the job's owner until it is finished; any failure stops the bench."""
    target = f"/work/{work_id}?wait={WAIT_CHUNK_S:g}"
    while True:
        try:
            answer = await client.call("GET", target, timeout_s=client.timeout_s + WAIT_CHUNK_S)
            item = answer.json_object()
        except HttpError as exc:
            if isinstance(exc, Unavailable) and exc.unreachable:
                raise NoServer(f"{client.base_url}: {exc.reason}") from None
            if exc.status is None:
                raise BenchError(f"{client.base_url}: {exc.reason}") from None
            raise BenchError(f"{client.base_url} answered GET /work/{work_id} with {exc.reason}") from None
        if item.get("status") in ("completed", "failed"):
            return item


async def run_latency(cfg: BenchConfig) -> BenchReport:
    report = BenchReport("latency", cfg)
    transport = make_transport(cfg, 2 * len(cfg.servers))
    try:
        clients = _clients(cfg, transport)
        enqueuer = Enqueuer(clients, cfg.iterations)
        start = time.perf_counter()
        try:
            async with asyncio.timeout(cfg.timeout_s):
                for index in range(cfg.warmup + cfg.jobs):
                    body = os.urandom(cfg.body_bytes)
                    t0 = time.perf_counter()
                    ack = await enqueuer.put(index, body)
                    acked = time.perf_counter()
                    item = await _wait_finished(clients[ack.server], ack.work_id)
                    t1 = time.perf_counter()
                    if index < cfg.warmup:
                        start = t1
                        continue
                    report.completed += 1
                    report.latencies_s.append(t1 - t0)
                    report.enqueue_latencies_s.append(acked - t0)
                    if ack.result is not None:  # hashed on arrival: the answer already had it
                        report.answered_latencies_s.append(acked - t0)
                    if item.get("result") is None:
                        report.failed += 1
                    elif ack.result not in (None, item["result"]) or (  # the ack's result must be the job's
                        cfg.verify and item["result"] != reference_result(body, cfg.iterations)
                    ):
                        report.wrong += 1
        except TimeoutError:
            _timed_out(cfg, report)
        except BenchError as exc:
            report.error, report.error_kind = str(exc), exc.kind
        report.elapsed_s = max(time.perf_counter() - start, 0.0)
        report.enqueue_retries = enqueuer.retries
    finally:
        await transport.close()
    return report


async def run(cfg: BenchConfig, latency: bool = False) -> BenchReport:
    """One bench run in the mode asked for; its report says how far it got and why it stopped."""
    return await (run_latency(cfg) if latency else run_throughput(cfg))
