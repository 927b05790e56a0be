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

The generator is kept cheap so that on a small machine it measures the servers, not itself: pooled
keep-alive connections, no per-job output, and by default a lean HTTP/1.1 client on asyncio
protocols that spends about a third of the CPU per job of aiohttp's client (`client="aiohttp"`
selects that one instead, e.g. to compare with an aiohttp baseline).
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import json
import math
import os
import ssl
import time
from typing import Mapping, Sequence

import aiohttp
from yarl import URL

PULL_TOP = 1000
PULL_INTERVAL_S = 0.02  # a puller whose last pull was not full waits this long before the next
WAIT_CHUNK_S = 5.0  # latency mode: one long-poll lasts at most this long
RETRY_AFTER_MAX_S = 2.0
PERCENTILES = (50, 95, 99)
CLIENTS = ("raw", "aiohttp")  # HTTP clients the bench can use


class BenchError(Exception):
    """The bench could not go on: a request got no usable answer."""

    kind = "lost"


class NoServer(BenchError):
    """No server could be connected to."""

    kind = "unreachable"


class JobRefused(BenchError):
    """A server refused the bench's jobs (4xx): the parameters do not suit it."""

    kind = "refused"


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
    http_timeout_s: float = 10.0  # connecting, and waiting for an answer (plus a long-poll's length)
    client: str = "raw"  # raw (lean HTTP/1.1 on asyncio) or aiohttp
    # Every pull that is not full costs both servers a query (the peer fills the rest), so pullers
    # pause between pulls that came back short; the pause adds at most this to measured latencies.
    pull_interval_s: float = PULL_INTERVAL_S

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("need at least one server")
        for name in ("jobs", "iterations", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.body_bytes < 0 or self.warmup < 0 or self.pull_interval_s < 0:
            raise ValueError("body_bytes, warmup and pull_interval_s must be >= 0")
        if self.timeout_s <= 0 or self.http_timeout_s <= 0:
            raise ValueError("timeout_s and http_timeout_s must be > 0")
        if self.client not in CLIENTS:
            raise ValueError(f"client must be one of {', '.join(CLIENTS)}")


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
    enqueue_latencies_s: list[float] = dataclasses.field(default_factory=list, repr=False)  # PUT sent -> ack
    error: str | None = None  # why the bench stopped early
    error_kind: str | None = None  # timeout, or a BenchError's kind: lost, unreachable, refused

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
        return {
            "mode": self.mode, "servers": list(cfg.servers), "jobs": cfg.jobs, "iterations": cfg.iterations,
            "body_bytes": cfg.body_bytes, "client": cfg.client,
            "concurrency": cfg.concurrency if self.mode == "throughput" else 1,
            "completed": self.completed, "failed": self.failed, "wrong": self.wrong if cfg.verify else None,
            "foreign": self.foreign, "elapsed_s": round(self.elapsed_s, 4), "enqueue_s": round(self.enqueue_s, 4),
            "enqueue_retries": self.enqueue_retries, "jobs_per_s": round(self.jobs_per_s, 1),
            "latency_ms": _json_summary(self.latencies_s),
            "enqueue_latency_ms": _json_summary(self.enqueue_latencies_s),
            "complete": self.complete, "ok": self.ok, "error": self.error, "error_kind": self.error_kind,
        }

    def format(self) -> str:
        cfg = self.config
        lat = latency_summary(self.latencies_s)
        plural = "s" if cfg.iterations != 1 else ""
        if self.mode == "throughput":
            head = (f"bench: {cfg.jobs} jobs x {cfg.iterations} iteration{plural}, {cfg.body_bytes}-byte bodies, "
                    f"concurrency {cfg.concurrency}, {len(cfg.servers)} server{'s' if len(cfg.servers) != 1 else ''}, "
                    f"{cfg.client} client")
            enq_rate = cfg.jobs / self.enqueue_s if self.enqueue_s > 0 and self.error is None else 0.0
            lines = [head,
                     f"  enqueued    {self.enqueue_s:8.3f} s  ({enq_rate:,.0f} jobs/s, {self.enqueue_retries} retried)",
                     f"  end to end  {self.elapsed_s:8.3f} s  {self.jobs_per_s:,.0f} jobs/s "
                     f"({self.completed}/{cfg.jobs} results)",
                     "  latency     ack -> pulled: " + _format_latency(lat),
                     "  enqueue     PUT -> ack:    " + _format_latency(latency_summary(self.enqueue_latencies_s))]
        else:
            head = (f"bench --latency: {len(self.latencies_s)} jobs one at a time (+{cfg.warmup} warm-up) x "
                    f"{cfg.iterations} iteration{plural}, {cfg.body_bytes}-byte bodies")
            lines = [head, "  latency     enqueue -> finished: " + _format_latency(lat),
                     "  of which    PUT -> ack:          " + _format_latency(latency_summary(self.enqueue_latencies_s))]
        tail = f"  failed {self.failed}"
        if cfg.verify:
            tail += f", wrong {self.wrong}"
        if self.mode == "throughput":
            tail += f", foreign results {self.foreign}" + (" (not ours: pulled and dropped)" if self.foreign else "")
        lines.append(tail)
        if self.error:
            lines.append(f"  stopped early: {self.error}")
        return "\n".join(lines)


def _json_summary(latencies_s: Sequence[float]) -> dict[str, float | None]:
    return {k: (None if math.isnan(v) else round(v, 3)) for k, v in latency_summary(latencies_s).items()}


def _format_latency(summary: dict[str, float]) -> str:
    return "  ".join(f"{key} {summary[key]:.2f} ms" for key in ("p50", "p95", "p99", "max"))


# -- HTTP ----------------------------------------------------------------------------------------------

class ConnectFailed(Exception):
    """No connection could be made, so nothing was sent: the request may go to another server."""


Answer = tuple[int, Mapping[str, str], bytes]  # status, headers (look up lower-case names), body


def describe_exception(exc: BaseException) -> str:
    """A short human reason for a failed HTTP call."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return describe_exception(exc.os_error) if exc.os_error else f"cannot connect ({exc})"
    if isinstance(exc, (aiohttp.ServerDisconnectedError, ConnectionResetError)):
        return "server disconnected"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


class AiohttpTransport:
    """The bench's requests through one aiohttp ClientSession (keep-alive, pooled connections)."""

    name = "aiohttp"

    def __init__(self, servers: Sequence[str], connections: int, http_timeout_s: float) -> None:
        self.servers = list(servers)
        connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0, ttl_dns_cache=None)
        self.http_timeout_s = http_timeout_s
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=http_timeout_s, sock_read=http_timeout_s)
        self.session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                             skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"))

    async def request(self, server: int, method: str, target: str, body: bytes | None = None,
                      wait_s: float = 0.0) -> Answer:
        """One request; wait_s is how long the server may hold it (a long-poll) beyond the timeout."""
        extra = {}
        if wait_s:  # (passing timeout=None would mean no timeout at all)
            extra["timeout"] = aiohttp.ClientTimeout(total=None, sock_connect=self.http_timeout_s,
                                                     sock_read=self.http_timeout_s + wait_s)
        try:
            async with self.session.request(method, URL(self.servers[server] + target, encoded=True),
                                            data=body, **extra) as resp:
                return resp.status, resp.headers, await resp.read()
        except aiohttp.ClientConnectorError as exc:
            raise ConnectFailed(describe_exception(exc)) from None

    async def close(self) -> None:
        await self.session.close()


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time (Content-Length bodies)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.open = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.open = True

    def connection_lost(self, exc) -> None:
        self.open = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError("server closed the connection"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        try:
            status, headers = _parse_head(bytes(self.buffer[:end]))
            if "chunked" in headers.get("transfer-encoding", ""):
                raise ValueError("chunked responses are not supported")
            total = end + 4 + int(headers.get("content-length", "0"))
        except ValueError as exc:
            self.open = False
            self.waiter.set_exception(exc)
            self.transport.close()
            return
        if len(self.buffer) < total:
            return
        body = bytes(self.buffer[end + 4:total])
        del self.buffer[:total]
        if headers.get("connection", "").lower() == "close":
            self.open = False
        self.waiter.set_result((status, headers, body))

    async def request(self, head: bytes, body: bytes | None) -> Answer:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.writelines((head, body) if body else (head,))
        try:
            return await self.waiter
        finally:
            self.waiter = None


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP/1.x response: {lines[0][:60]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


class RawTransport:
    """Keep-alive HTTP/1.1 straight on asyncio protocols: only what the bench sends and the servers
    answer, for about a quarter of aiohttp's client CPU per request, so that on a small machine the
    generator measures the servers rather than itself."""

    name = "raw"

    def __init__(self, servers: Sequence[str], http_timeout_s: float) -> None:
        urls = [URL(s) for s in servers]
        self.addresses = [(u.host, u.port, u.scheme == "https") for u in urls]
        self.hosts = [u.raw_authority for u in urls]
        self.http_timeout_s = http_timeout_s
        self.idle: list[list[_Connection]] = [[] for _ in urls]
        self.busy: set[_Connection] = set()

    async def _acquire(self, server: int) -> _Connection:
        idle = self.idle[server]
        while idle:
            conn = idle.pop()
            if conn.open:
                return conn
            conn.transport.close()
        host, port, tls = self.addresses[server]
        try:
            async with asyncio.timeout(self.http_timeout_s):
                _, conn = await asyncio.get_running_loop().create_connection(
                    _Connection, host, port, ssl=ssl.create_default_context() if tls else None)
        except (OSError, TimeoutError) as exc:
            raise ConnectFailed(describe_exception(exc)) from None
        return conn

    async def request(self, server: int, method: str, target: str, body: bytes | None = None,
                      wait_s: float = 0.0) -> Answer:
        """One request; wait_s is how long the server may hold it (a long-poll) beyond the timeout."""
        conn = await self._acquire(server)
        head = (f"{method} {target} HTTP/1.1\r\nHost: {self.hosts[server]}\r\n"
                f"Content-Length: {len(body) if body else 0}\r\n\r\n").encode("latin-1")
        self.busy.add(conn)
        try:
            async with asyncio.timeout(self.http_timeout_s + wait_s):
                answer = await conn.request(head, body)
        except BaseException:
            conn.open = False
            conn.transport.close()
            raise
        finally:
            self.busy.discard(conn)
        if conn.open:
            self.idle[server].append(conn)
        else:
            conn.transport.close()
        return answer

    async def close(self) -> None:
        for conn in [c for idle in self.idle for c in idle] + list(self.busy):
            conn.transport.close()
        self.idle = [[] for _ in self.idle]
        await asyncio.sleep(0)  # let the transports finish closing


def make_transport(cfg: BenchConfig, connections: int) -> RawTransport | AiohttpTransport:
    if cfg.client == "aiohttp":
        return AiohttpTransport(cfg.servers, connections, cfg.http_timeout_s)
    return RawTransport(cfg.servers, cfg.http_timeout_s)


def _error_text(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["error"])
    except (ValueError, KeyError, TypeError):
        return raw[:200].decode("utf-8", "replace") or "(empty body)"


LOST = (aiohttp.ClientError, TimeoutError, OSError, ValueError)  # sent, but no usable answer came back


class _Enqueuer:
    """PUT /enqueue with fail-over: a server that cannot be connected to is skipped for the next
    one, 503 (queue full) is retried after Retry-After; a refusal or a lost answer stops the bench."""

    def __init__(self, transport, servers: Sequence[str], iterations: int) -> None:
        self.transport = transport
        self.servers = list(servers)
        self.target = f"/enqueue?iterations={iterations}"
        self.retries = 0

    async def put(self, index: int, body: bytes) -> tuple[int, str]:
        """(server index, work id) of the body stored by the server `index` points at, or the next one."""
        failures: list[str] = []
        n = len(self.servers)
        attempt = 0
        while True:
            server = (index + attempt) % n
            try:
                status, headers, raw = await self.transport.request(server, "PUT", self.target, body)
            except ConnectFailed as exc:
                failures.append(f"{self.servers[server]}: {exc}")
                attempt += 1
                if attempt >= n:
                    raise NoServer("no server accepts jobs: " + "; ".join(failures)) from None
                continue
            except LOST as exc:
                # The job may have been stored: sending it again elsewhere could run it twice.
                raise BenchError(f"{self.servers[server]} gave no answer to an enqueue: "
                                 f"{describe_exception(exc)}") from None
            if status == 200:
                return server, json.loads(raw)["work_id"]
            if status == 503:
                self.retries += 1
                await asyncio.sleep(_retry_after(headers.get("retry-after")))
                continue
            raise JobRefused(f"{self.servers[server]} refused a job: HTTP {status}: {_error_text(raw)}")


def _retry_after(header: str | None) -> float:
    try:
        return min(max(float(header), 0.01), RETRY_AFTER_MAX_S) if header else 0.1
    except ValueError:
        return 0.1


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


async def _pull_loop(transport, server: int, tracker: _Tracker, interval_s: float) -> None:
    target = f"/pullCompleted?top={PULL_TOP}"
    failures = 0
    while not tracker.all_seen.is_set():
        try:
            status, _, raw = await transport.request(server, "POST", target)
        except (ConnectFailed, *LOST):
            status, raw = 0, b""
        now = time.perf_counter()
        if status == 200:
            failures = 0
            items = json.loads(raw)
            tracker.pulled(items, now)
            if len(items) < PULL_TOP:
                await asyncio.sleep(interval_s)
        else:
            # A server that is down is skipped: its peer's pullCompleted fills from it once it is back.
            failures += 1
            await asyncio.sleep(min(max(interval_s, 0.005) * 2 ** failures, 0.5))


async def _enqueue_loop(enqueuer: _Enqueuer, counter: itertools.count, cfg: BenchConfig, tracker: _Tracker) -> None:
    for index in counter:
        if index >= cfg.jobs:
            return
        body = os.urandom(cfg.body_bytes)
        sent = time.perf_counter()
        _, work_id = await enqueuer.put(index, body)
        acked = time.perf_counter()
        tracker.report.enqueue_latencies_s.append(acked - sent)
        tracker.ack(work_id, acked, body if cfg.verify else None)


async def run_throughput(cfg: BenchConfig) -> BenchReport:
    report = BenchReport("throughput", cfg)
    tracker = _Tracker(report, cfg.verify)
    counter = itertools.count()
    transport = make_transport(cfg, cfg.concurrency + 2 * len(cfg.servers))
    try:
        enqueuer = _Enqueuer(transport, cfg.servers, cfg.iterations)
        start = time.perf_counter()
        pullers = [asyncio.create_task(_pull_loop(transport, i, tracker, cfg.pull_interval_s))
                   for i in range(len(cfg.servers))]
        enqueuers = [asyncio.create_task(_enqueue_loop(enqueuer, counter, cfg, tracker))
                     for _ in range(min(cfg.concurrency, cfg.jobs))]
        try:
            async with asyncio.timeout(cfg.timeout_s):
                await asyncio.gather(*enqueuers)
                await tracker.all_seen.wait()
        except TimeoutError:
            report.error = f"timed out after {cfg.timeout_s:g} s with {report.completed}/{cfg.jobs} results"
            report.error_kind = "timeout"
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

async def _wait_finished(transport, servers: Sequence[str], server: int, work_id: str) -> dict:
    target = f"/work/{work_id}?wait={WAIT_CHUNK_S:g}"
    while True:
        try:
            status, _, raw = await transport.request(server, "GET", target, wait_s=WAIT_CHUNK_S)
        except ConnectFailed as exc:
            raise NoServer(f"{servers[server]}: {exc}") from None
        except LOST as exc:
            raise BenchError(f"{servers[server]}: {describe_exception(exc)}") from None
        if status != 200:
            raise BenchError(f"{servers[server]} answered GET /work/{work_id} with HTTP {status}: {_error_text(raw)}")
        item = json.loads(raw)
        if item.get("status") in ("completed", "failed"):
            return item


async def run_latency(cfg: BenchConfig) -> BenchReport:
    report = BenchReport("latency", cfg)
    transport = make_transport(cfg, 2 * len(cfg.servers))
    try:
        enqueuer = _Enqueuer(transport, cfg.servers, cfg.iterations)
        start = time.perf_counter()
        try:
            async with asyncio.timeout(cfg.timeout_s):
                for index in range(cfg.warmup + cfg.jobs):
                    body = os.urandom(cfg.body_bytes)
                    t0 = time.perf_counter()
                    server, work_id = await enqueuer.put(index, body)
                    acked = time.perf_counter()
                    item = await _wait_finished(transport, cfg.servers, server, work_id)
                    t1 = time.perf_counter()
                    if index < cfg.warmup:
                        start = t1
                        continue
                    report.completed += 1
                    report.latencies_s.append(t1 - t0)
                    report.enqueue_latencies_s.append(acked - t0)
                    if item.get("result") is None:
                        report.failed += 1
                    elif cfg.verify and item["result"] != chain(body, cfg.iterations):
                        report.wrong += 1
        except TimeoutError:
            report.error = f"timed out after {cfg.timeout_s:g} s with {report.completed}/{cfg.jobs} results"
            report.error_kind = "timeout"
        except BenchError as exc:
            report.error, report.error_kind = str(exc), exc.kind
        report.elapsed_s = max(time.perf_counter() - start, 0.0)
        report.enqueue_retries = enqueuer.retries
    finally:
        await transport.close()
    return report


async def run(cfg: BenchConfig, latency: bool = False) -> BenchReport:
    return await (run_latency(cfg) if latency else run_throughput(cfg))
