"""`dynwork bench`: a load generator for the public API.

Throughput mode enqueues `jobs` jobs over all servers (round-robin, bounded concurrency) while one
puller per server drains `POST /pullCompleted?top=1000` until every job of the bench has been seen.
jobs/s is measured end to end, from the first enqueue to the last result pulled; a job's latency
runs from its enqueue acknowledgement to the moment its result was pulled. pullCompleted hands each
result out once across both servers, so the bench must be the only puller: results that are not the
bench's own are counted as `foreign` and otherwise ignored.

Latency mode runs one job at a time: enqueue, then `GET /work/{id}?wait=S` on the same server until
it is finished, and reports percentiles of that round trip (after a few warm-up jobs that give the
autoscaler time to start a worker). Its results are not pulled.

The generator is kept cheap so that it measures the servers, not itself: one ClientSession with
keep-alive, URLs built once, no per-job output.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import json
import math
import os
import time
from typing import Sequence

import aiohttp
from yarl import URL

PULL_TOP = 1000
PULL_IDLE_S = 0.005  # a puller that found nothing waits this long before asking again
WAIT_CHUNK_S = 5.0  # latency mode: one long-poll lasts at most this long
RETRY_AFTER_MAX_S = 2.0
PERCENTILES = (50, 95, 99)


class BenchError(Exception):
    """The bench could not run: no server reachable, or a server refused its jobs."""


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, interpolating linearly between the
    closest ranks (numpy's default method); nan for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    if not sorted_values:
        return math.nan
    rank = (len(sorted_values) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max/mean in milliseconds (nan where there is nothing to measure)."""
    ordered = sorted(latencies_s)
    summary = {f"p{q}": percentile(ordered, q) * 1000 for q in PERCENTILES}
    summary["max"] = ordered[-1] * 1000 if ordered else math.nan
    summary["mean"] = sum(ordered) / len(ordered) * 1000 if ordered else math.nan
    return summary


def chain(body: bytes, iterations: int) -> str:
    """The reference result of a job, for --verify."""
    out = hashlib.sha512(body).digest()
    for _ in range(iterations - 1):
        out = hashlib.sha512(out).digest()
    return out.hex()


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    servers: tuple[str, ...]
    jobs: int = 10_000
    iterations: int = 1
    body_bytes: int = 64
    concurrency: int = 64
    timeout_s: float = 300.0
    verify: bool = False  # check every result against hashlib (keeps the bodies in memory)
    warmup: int = 3  # latency mode: jobs run first and left out of the figures
    http_timeout_s: float = 10.0  # connecting, and silence on a connection (plus a long-poll's length)

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("need at least one server")
        for name in ("jobs", "iterations", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.body_bytes < 0 or self.warmup < 0 or self.timeout_s <= 0 or self.http_timeout_s <= 0:
            raise ValueError("body_bytes and warmup must be >= 0, timeout_s and http_timeout_s > 0")


@dataclasses.dataclass
class BenchReport:
    mode: str  # throughput | latency
    config: BenchConfig
    completed: int = 0  # jobs of the bench whose result came back (failed ones included)
    failed: int = 0  # ... of which the server reported failed
    wrong: int = 0  # ... of which the result differed from hashlib (--verify)
    foreign: int = 0  # results pulled that belong to no job of the bench
    elapsed_s: float = 0.0  # first enqueue to last result
    enqueue_s: float = 0.0  # first enqueue to last acknowledgement
    enqueue_retries: int = 0  # 503 answers (queue full) that were retried
    latencies_s: list[float] = dataclasses.field(default_factory=list, repr=False)
    error: str | None = None  # why the bench stopped early

    @property
    def complete(self) -> bool:
        return self.error is None and self.completed == self.config.jobs

    @property
    def ok(self) -> bool:
        return self.complete and self.failed == 0 and self.wrong == 0

    @property
    def jobs_per_s(self) -> float:
        return self.completed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_json(self) -> dict:
        cfg = self.config
        latency = {k: (None if math.isnan(v) else round(v, 3)) for k, v in latency_summary(self.latencies_s).items()}
        return {
            "mode": self.mode, "servers": list(cfg.servers), "jobs": cfg.jobs, "iterations": cfg.iterations,
            "body_bytes": cfg.body_bytes, "concurrency": cfg.concurrency if self.mode == "throughput" else 1,
            "completed": self.completed, "failed": self.failed, "wrong": self.wrong if cfg.verify else None,
            "foreign": self.foreign, "elapsed_s": round(self.elapsed_s, 4), "enqueue_s": round(self.enqueue_s, 4),
            "enqueue_retries": self.enqueue_retries, "jobs_per_s": round(self.jobs_per_s, 1),
            "latency_ms": latency, "complete": self.complete, "ok": self.ok, "error": self.error,
        }

    def format(self) -> str:
        cfg = self.config
        lat = latency_summary(self.latencies_s)
        plural = "s" if cfg.iterations != 1 else ""
        if self.mode == "throughput":
            head = (f"bench: {cfg.jobs} jobs x {cfg.iterations} iteration{plural}, {cfg.body_bytes}-byte bodies, "
                    f"concurrency {cfg.concurrency}, {len(cfg.servers)} server{'s' if len(cfg.servers) != 1 else ''}")
            enq_rate = cfg.jobs / self.enqueue_s if self.enqueue_s > 0 and self.error is None else 0.0
            lines = [head,
                     f"  enqueued    {self.enqueue_s:8.3f} s  ({enq_rate:,.0f} jobs/s, {self.enqueue_retries} retried)",
                     f"  end to end  {self.elapsed_s:8.3f} s  {self.jobs_per_s:,.0f} jobs/s "
                     f"({self.completed}/{cfg.jobs} results)",
                     "  latency     ack -> pulled: " + _format_latency(lat)]
        else:
            head = (f"bench --latency: {len(self.latencies_s)} jobs one at a time (+{cfg.warmup} warm-up) x "
                    f"{cfg.iterations} iteration{plural}, {cfg.body_bytes}-byte bodies")
            lines = [head, "  latency     enqueue -> finished: " + _format_latency(lat)]
        tail = f"  failed {self.failed}"
        if cfg.verify:
            tail += f", wrong {self.wrong}"
        if self.mode == "throughput":
            tail += f", foreign results {self.foreign}" + (" (not ours: pulled and dropped)" if self.foreign else "")
        lines.append(tail)
        if self.error:
            lines.append(f"  stopped early: {self.error}")
        return "\n".join(lines)


def _format_latency(summary: dict[str, float]) -> str:
    return "  ".join(f"{key} {summary[key]:.2f} ms" for key in ("p50", "p95", "p99", "max"))


# -- HTTP ----------------------------------------------------------------------------------------------

def _session(connections: int, http_timeout_s: float) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=http_timeout_s, sock_read=http_timeout_s + WAIT_CHUNK_S)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                 skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"))


def _error_text(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["error"])
    except (ValueError, KeyError, TypeError):
        return raw[:200].decode("utf-8", "replace") or "(empty body)"


class _Enqueuer:
    """PUT /enqueue with fail-over: a server that cannot be connected to is skipped for the next
    one, 503 (queue full) is retried after Retry-After; a refusal or a lost answer stops the bench."""

    def __init__(self, session: aiohttp.ClientSession, servers: Sequence[str], iterations: int) -> None:
        self.session = session
        self.servers = list(servers)
        self.urls = [URL(f"{s}/enqueue?iterations={iterations}", encoded=True) for s in servers]
        self.retries = 0

    async def put(self, index: int, body: bytes) -> tuple[int, str]:
        """(server index, work id) of the body stored by the server `index` points at, or the next one."""
        failures: list[str] = []
        n = len(self.urls)
        attempt = 0
        while True:
            server = (index + attempt) % n
            try:
                async with self.session.put(self.urls[server], data=body) as resp:
                    raw = await resp.read()
                    status = resp.status
                    retry_after = resp.headers.get("Retry-After")
            except aiohttp.ClientConnectorError as exc:  # nothing was sent: safe to try the next server
                failures.append(f"{self.servers[server]}: {describe_exception(exc)}")
                attempt += 1
                if attempt >= n:
                    raise BenchError("no server accepts jobs: " + "; ".join(failures)) from None
                continue
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                # The job may have been stored: sending it again elsewhere could run it twice.
                raise BenchError(f"{self.servers[server]} gave no answer to an enqueue: {describe_exception(exc)}") from None
            if status == 200:
                return server, json.loads(raw)["work_id"]
            if status == 503:
                self.retries += 1
                await asyncio.sleep(_retry_after(retry_after))
                continue
            raise BenchError(f"{self.servers[server]} refused a job: HTTP {status}: {_error_text(raw)}")


def _retry_after(header: str | None) -> float:
    try:
        return min(max(float(header), 0.01), RETRY_AFTER_MAX_S) if header else 0.1
    except ValueError:
        return 0.1


def describe_exception(exc: BaseException) -> str:
    """A short human reason for a failed HTTP call."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "connection refused"
        return f"cannot connect ({exc.os_error.strerror or exc.os_error})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    return str(exc) or type(exc).__name__


# -- throughput ------------------------------------------------------------------------------------

class _Tracker:
    """Matches pulled results to acknowledged jobs, whichever of the two arrives first."""

    def __init__(self, report: BenchReport, verify: bool) -> None:
        self.report = report
        self.verify = verify
        self.acked: dict[str, tuple[float, bytes | None]] = {}  # ours, result not seen yet
        self.early: dict[str, tuple[float, dict]] = {}  # pulled, no ack (yet): foreign, or an ack in flight
        self.last_seen = 0.0
        self.last_ack = 0.0
        self.all_seen = asyncio.Event()

    def ack(self, work_id: str, at: float, body: bytes | None) -> None:
        self.last_ack = at
        pulled = self.early.pop(work_id, None)
        if pulled is None:
            self.acked[work_id] = (at, body)
        else:
            self._seen(pulled[1], max(pulled[0] - at, 0.0), body, pulled[0])

    def pulled(self, items: list, at: float) -> None:
        for item in items:
            work_id = item.get("work_id") if isinstance(item, dict) else None
            mine = self.acked.pop(work_id, None)
            if mine is None:
                self.early[work_id] = (at, item)
            else:
                self._seen(item, at - mine[0], mine[1], at)

    def _seen(self, item: dict, latency_s: float, body: bytes | None, at: float) -> None:
        report = self.report
        report.completed += 1
        report.latencies_s.append(latency_s)
        self.last_seen = max(self.last_seen, at)
        if item.get("result") is None:
            report.failed += 1
        elif self.verify and body is not None and item["result"] != chain(body, report.config.iterations):
            report.wrong += 1
        if report.completed >= report.config.jobs:
            self.all_seen.set()


async def _pull_loop(session: aiohttp.ClientSession, server: str, tracker: _Tracker) -> None:
    url = URL(f"{server}/pullCompleted?top={PULL_TOP}", encoded=True)
    failures = 0
    while not tracker.all_seen.is_set():
        try:
            async with session.post(url) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            status, raw = 0, b""
        now = time.perf_counter()
        if status == 200:
            failures = 0
            items = json.loads(raw)
            tracker.pulled(items, now)
            if len(items) < PULL_TOP:
                await asyncio.sleep(PULL_IDLE_S)
        else:
            # A server that is down is skipped: its peer's pullCompleted fills from it once it is back.
            failures += 1
            await asyncio.sleep(min(PULL_IDLE_S * 2 ** failures, 0.5))


async def _enqueue_loop(enqueuer: _Enqueuer, counter: itertools.count, cfg: BenchConfig, tracker: _Tracker) -> None:
    for index in counter:
        if index >= cfg.jobs:
            return
        body = os.urandom(cfg.body_bytes)
        _, work_id = await enqueuer.put(index, body)
        tracker.ack(work_id, time.perf_counter(), body if cfg.verify else None)


async def run_throughput(cfg: BenchConfig) -> BenchReport:
    report = BenchReport("throughput", cfg)
    tracker = _Tracker(report, cfg.verify)
    counter = itertools.count()
    async with _session(cfg.concurrency + 2 * len(cfg.servers), cfg.http_timeout_s) as session:
        enqueuer = _Enqueuer(session, cfg.servers, cfg.iterations)
        start = time.perf_counter()
        pullers = [asyncio.create_task(_pull_loop(session, s, tracker)) for s in cfg.servers]
        enqueuers = [asyncio.create_task(_enqueue_loop(enqueuer, counter, cfg, tracker))
                     for _ in range(min(cfg.concurrency, cfg.jobs))]
        try:
            async with asyncio.timeout(cfg.timeout_s):
                await asyncio.gather(*enqueuers)
                await tracker.all_seen.wait()
        except TimeoutError:
            report.error = f"timed out after {cfg.timeout_s:g} s with {report.completed}/{cfg.jobs} results"
        except BenchError as exc:
            report.error = str(exc)
        finally:
            for task in pullers + enqueuers:
                task.cancel()
            await asyncio.gather(*pullers, *enqueuers, return_exceptions=True)
        report.enqueue_retries = enqueuer.retries
        report.enqueue_s = max(tracker.last_ack - start, 0.0)
        report.elapsed_s = max(tracker.last_seen - start, 0.0)
        # Results pulled without an acknowledgement of ours are someone else's.
        report.foreign = len(tracker.early)
    return report


# -- latency -----------------------------------------------------------------------------------------

async def _wait_finished(session: aiohttp.ClientSession, server: str, work_id: str) -> dict:
    url = URL(f"{server}/work/{work_id}?wait={WAIT_CHUNK_S:g}", encoded=True)
    while True:
        try:
            async with session.get(url) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise BenchError(f"{server}: {describe_exception(exc)}") from None
        if status != 200:
            raise BenchError(f"{server} answered GET /work/{work_id} with HTTP {status}: {_error_text(raw)}")
        item = json.loads(raw)
        if item.get("status") in ("completed", "failed"):
            return item


async def run_latency(cfg: BenchConfig) -> BenchReport:
    report = BenchReport("latency", cfg)
    async with _session(2 * len(cfg.servers), cfg.http_timeout_s) as session:
        enqueuer = _Enqueuer(session, cfg.servers, cfg.iterations)
        start = time.perf_counter()
        try:
            async with asyncio.timeout(cfg.timeout_s):
                for index in range(cfg.warmup + cfg.jobs):
                    body = os.urandom(cfg.body_bytes)
                    t0 = time.perf_counter()
                    server, work_id = await enqueuer.put(index, body)
                    item = await _wait_finished(session, cfg.servers[server], work_id)
                    t1 = time.perf_counter()
                    if index < cfg.warmup:
                        start = t1
                        continue
                    report.completed += 1
                    report.latencies_s.append(t1 - t0)
                    if item.get("result") is None:
                        report.failed += 1
                    elif cfg.verify and item["result"] != chain(body, cfg.iterations):
                        report.wrong += 1
        except TimeoutError:
            report.error = f"timed out after {cfg.timeout_s:g} s with {report.completed}/{cfg.jobs} results"
        except BenchError as exc:
            report.error = str(exc)
        report.elapsed_s = max(time.perf_counter() - start, 0.0)
        report.enqueue_retries = enqueuer.retries
    return report


async def run(cfg: BenchConfig, latency: bool = False) -> BenchReport:
    return await (run_latency(cfg) if latency else run_throughput(cfg))
