"""server.limits and the body bounds of server.web, against the installed aiohttp on loopback; and the
other bounds of the store and the service (max_queued, counts kept, the registry pruned, the WAL).

Timeouts here are a few tenths of a second; each assertion allows a generous margin above the bound
(a loaded machine is slow to wake up, never early)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator

from aiohttp import web

from server import db
from server.errors import Unavailable
from server.jobs import Outcome, State
from server.limits import (
    CONNECTIONS,
    REFUSED_LINGER_S,
    ConnectionLimits,
    Connections,
    GuardedAppRunner,
    limits_middleware,
)
from server.registry import Registry
from server.web import BODY_LIMITS, BodyLimits, RequestUpload, errors_middleware, json_response, read_json
from tests.unit.support import FakeClock, aio, insert_seq, opened_node, opened_store, until

MARGIN_S = 1.5  # how late a cut-off may come on a loaded machine
REFUSED_CLOSE_S = REFUSED_LINGER_S + MARGIN_S
BODY = BodyLimits(read_timeout_s=0.4, min_bytes_per_s=64 << 10, json_max_bytes=1 << 16)


@dataclasses.dataclass
class Served:
    port: int
    connections: Connections
    stored: list[bytes]


@contextlib.asynccontextmanager
async def serving(
    *,
    header_timeout_s: float = 0.4,
    keepalive_s: float = 5.0,
    max_connections: int = 100,
    reserved: int = 0,
    body: BodyLimits = BODY,
) -> AsyncIterator[Served]:
    """A GuardedAppRunner on a free port with the middlewares of server.app and a few handlers."""
    stored: list[bytes] = []

    async def upload(request: web.Request) -> web.Response:
        body = b"".join(await RequestUpload(request).read(1 << 21))
        stored.append(body)
        return json_response({"size": len(body)})

    async def wait(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "0")))
        return json_response({"path": request.path})

    async def denied(request: web.Request) -> web.Response:
        return json_response({"error": "authentication required"}, status=401)

    async def echo(request: web.Request) -> web.Response:
        return json_response(await read_json(request))

    app = web.Application(middlewares=[limits_middleware, errors_middleware])
    limits = ConnectionLimits(max_connections=max_connections, reserved_connections=reserved)
    app[CONNECTIONS] = connections = Connections(dataclasses.replace(limits, header_timeout_s=header_timeout_s))
    app[BODY_LIMITS] = body
    app.router.add_put("/upload", upload)
    app.router.add_get("/wait", wait)
    app.router.add_get("/internal/wait", wait)
    app.router.add_get("/internal/denied", denied)
    app.router.add_post("/internal/echo", echo)
    runner = GuardedAppRunner(app, connections, access_log=None, keepalive_timeout=keepalive_s)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield Served(runner.addresses[0][1], connections, stored)
    finally:
        await runner.cleanup()


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(port: int) -> Stream:
    return await asyncio.open_connection("127.0.0.1", port)


def request(method: str, path: str, body: bytes = b"", headers: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body


async def response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


async def closed_after(reader: asyncio.StreamReader, within_s: float) -> tuple[float, bytes]:
    """Seconds until the server closes (EOF or reset), and what it sent before."""
    loop = asyncio.get_running_loop()
    started, received = loop.time(), b""
    async with asyncio.timeout(within_s):
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(4096):
                received += chunk
    return loop.time() - started, received


async def trickle(writer: asyncio.StreamWriter, data: bytes, every_s: float) -> None:
    with contextlib.suppress(ConnectionError):
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(every_s)


# -- headers and idle connections ---------------------------------------------------------------


@aio
async def test_headers_sent_a_byte_at_a_time_are_cut_off_at_header_timeout():
    async with serving(header_timeout_s=0.4) as served:
        reader, writer = await connect(served.port)
        sender = asyncio.create_task(trickle(writer, request("GET", "/wait"), every_s=0.05))
        elapsed, received = await closed_after(reader, 0.4 + MARGIN_S)
        sender.cancel()
        assert elapsed >= 0.35 and received == b""  # ~8 bytes of ~40 arrived: closed, no answer
        assert served.connections.header_timeouts_total == 1
        await until(lambda: served.connections.open == 0, what="the connection counted out")


@aio
async def test_a_connection_that_never_sends_is_closed_at_keepalive_and_a_served_one_stays_up():
    async with serving(header_timeout_s=0.3, keepalive_s=1.0) as served:
        idle_reader, _idle_writer = await connect(served.port)  # (a writer collected closes its socket)
        idle = asyncio.create_task(closed_after(idle_reader, 1.0 + MARGIN_S))
        reader, writer = await connect(served.port)
        for _ in range(4):  # requests on one connection, each completed: no header deadline left armed
            writer.write(request("GET", "/wait?s=0.1"))
            assert (await response(reader))[0] == 200
            await asyncio.sleep(0.4)  # past header_timeout_s, within keepalive_s
        elapsed, received = await idle
        assert elapsed >= 0.9 and received == b""  # closed by keep-alive, not by the header deadline
        assert served.connections.header_timeouts_total == 0


@aio
async def test_a_server_side_wait_longer_than_every_timeout_is_not_cut_off():
    async with serving(header_timeout_s=0.3, keepalive_s=0.3) as served:
        reader, writer = await connect(served.port)
        writer.write(request("GET", "/wait?s=1.0"))
        status, _, body = await asyncio.wait_for(response(reader), 1.0 + MARGIN_S)
        assert (status, body) == (200, b'{"path":"/wait"}')


# -- bodies ------------------------------------------------------------------------------------


@aio
async def test_a_stalled_body_is_answered_408_the_connection_closed_and_nothing_stored():
    async with serving() as served:
        reader, writer = await connect(served.port)
        writer.write(request("PUT", "/upload", b"x" * 1000)[:-900])  # headers and 100 bytes, then nothing
        status, headers, body = await asyncio.wait_for(response(reader), BODY.read_timeout_s + MARGIN_S)
        assert status == 408 and headers["connection"] == "close" and b"too slow" in body
        await closed_after(reader, MARGIN_S)
        assert served.stored == [] and served.connections.body_timeouts_total == 1


@aio
async def test_a_body_slower_than_the_minimum_rate_is_cut_off_though_bytes_keep_coming():
    async with serving() as served:
        reader, writer = await connect(served.port)
        writer.write(request("PUT", "/upload", b"y" * 100_000)[:-100_000])
        sender = asyncio.create_task(trickle(writer, b"y" * 100_000, every_s=0.1))  # each read well within 0.4 s
        # 64 KiB/s after a 0.4 s grace: behind by then, as ~10 bytes a second arrive
        status, _, _ = await asyncio.wait_for(response(reader), 2 * BODY.read_timeout_s + MARGIN_S)
        sender.cancel()
        assert status == 408 and served.stored == []


@aio
async def test_a_steady_body_above_the_minimum_rate_is_taken_whole():
    async with serving(body=dataclasses.replace(BODY, read_timeout_s=2.0)) as served:
        reader, writer = await connect(served.port)
        data = os.urandom(256 << 10)
        writer.write(request("PUT", "/upload", data)[: -len(data)])
        for at in range(0, len(data), 16 << 10):  # 16 KiB per 50 ms: ~320 KiB/s for 0.8 s
            writer.write(data[at : at + (16 << 10)])
            await asyncio.sleep(0.05)
        status, _, body = await asyncio.wait_for(response(reader), MARGIN_S)
        assert (status, body) == (200, b'{"size":262144}') and served.stored == [data]


@aio
async def test_read_json_is_bounded_and_never_a_500():
    async with serving() as served:
        reader, writer = await connect(served.port)
        writer.write(request("POST", "/internal/echo", b'{"a":1}', "Content-Type: application/json; charset=nope\r\n"))
        assert (await response(reader))[::2] == (200, b'{"a":1}')
        writer.write(request("POST", "/internal/echo", b"\xff\xfe{"))
        assert (await response(reader))[0] == 400
        writer.write(request("POST", "/internal/echo", b"x" * ((1 << 16) + 1)))
        assert (await response(reader))[0] == 413
        stalled_reader, stalled = await connect(served.port)
        stalled.write(request("POST", "/internal/echo", b'{"a": 1}')[:-3])
        status, _, _ = await asyncio.wait_for(response(stalled_reader), BODY.read_timeout_s + MARGIN_S)
        assert status == 408


# -- the connection cap ----------------------------------------------------------------------


@aio
async def test_the_cap_keeps_reserved_slots_for_internal_traffic_and_refuses_beyond_it():
    async with serving(header_timeout_s=5.0, max_connections=4, reserved=2) as served:
        public = [await connect(served.port) for _ in range(2)]
        for reader, writer in public:
            writer.write(request("GET", "/wait"))
            assert (await response(reader))[0] == 200
        first, second = await connect(served.port), await connect(served.port)  # the reserved slots
        await until(lambda: served.connections.open == 4, what="four connections admitted")
        refused_reader, refused_writer = await connect(served.port)  # beyond the cap: answered at once
        status, headers, body = await asyncio.wait_for(response(refused_reader), MARGIN_S)
        assert (status, headers["retry-after"]) == (503, "1") and b"max_connections 4" in body
        await closed_after(refused_reader, REFUSED_CLOSE_S)  # the server's half-close
        refused_writer.close()
        # An /internal/ request is served on a reserved connection; a public one is refused, closed.
        first[1].write(request("GET", "/internal/wait"))
        assert (await response(first[0]))[0] == 200
        second[1].write(request("GET", "/wait"))
        status, headers, _ = await response(second[0])
        assert (status, headers["retry-after"], headers["connection"]) == (503, "1", "close")
        await closed_after(second[0], MARGIN_S)
        # A failed authentication on a reserved connection closes it too.
        first[1].write(request("GET", "/internal/denied"))
        assert (await response(first[0]))[0] == 401
        await closed_after(first[0], MARGIN_S)
        # The connections opened first were never touched, and closed slots are free again.
        public[0][1].write(request("GET", "/wait"))
        assert (await response(public[0][0]))[0] == 200
        public[1][1].close()
        await until(lambda: served.connections.open == 1, what="the closed connections counted out")
        reader, writer = await connect(served.port)  # within the public share again
        writer.write(request("GET", "/wait"))
        assert (await response(reader))[0] == 200
        await until(lambda: served.connections.lingering == 0, what="the refused connection closed")
        assert served.connections.status() | {"open": 0} == {
            "open": 0,
            "lingering_refused": 0,
            "max": 4,
            "reserved": 2,
            "refused_total": 1,
            "reserved_refusals_total": 1,
            "header_timeouts_total": 0,
            "body_timeouts_total": 0,
        }


@aio
async def test_an_idle_reserved_connection_must_send_within_header_timeout():
    async with serving(header_timeout_s=0.3, keepalive_s=30.0, max_connections=2, reserved=1) as served:
        _held = await connect(served.port)
        reader, _writer = await connect(served.port)
        elapsed, received = await closed_after(reader, 0.3 + MARGIN_S)
        assert received == b"" and elapsed >= 0.25


# -- the service's and the store's bounds ------------------------------------------------------


class Ready:
    content_length = 1

    async def read(self, limit: int) -> list[bytes]:
        return [b"r"]


class GatedUpload:
    """A body that arrives only once `gate` opens, as a slow upload does."""

    content_length = 3

    def __init__(self, gate: asyncio.Event) -> None:
        self.gate = gate

    async def read(self, limit: int) -> list[bytes]:
        await self.gate.wait()
        return [b"abc"]


@aio
async def test_max_queued_is_exact_under_concurrent_uploads(tmp_path):
    async with opened_node(tmp_path, max_queued=5) as node:
        await node.service.enqueue(1, Ready())
        gate = asyncio.Event()
        uploads = [asyncio.create_task(node.service.enqueue(1, GatedUpload(gate))) for _ in range(20)]
        await until(lambda: node.service.uploading == 4, what="four uploads admitted")
        gate.set()
        outcomes = await asyncio.gather(*uploads, return_exceptions=True)
        assert sum(not isinstance(o, BaseException) for o in outcomes) == 4
        assert all(isinstance(o, Unavailable) for o in outcomes if isinstance(o, BaseException))
        assert len(node.scheduler.queued) == 5 and node.service.uploading == 0


@aio
async def test_finished_counts_are_kept_not_counted(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        seqs = [await insert_seq(store, f"n{i:05d}", 1, b"b", 1.0) for i in range(300)]
        await store.finish([Outcome(s, bytes(64)) for s in seqs[:200]], "w", 2.0)
        await store.finish([Outcome(s, None, "boom") for s in seqs[200:250]], "w", 3.0)
        assert await store.expire_results(2.5) == 200
    counts = store.counts()  # answered with the database closed: kept, not counted
    assert (counts.get(State.COMPLETED, 0), counts[State.FAILED]) == (0, 50)


def test_the_registry_forgets_workers_silent_for_long():
    clock = FakeClock()
    registry = Registry(clock.mono)
    for i in range(1000):
        registry.touch(f"w{i}")
    clock.advance(50.0)
    registry.touch("w7")
    assert sorted(registry.prune(silent_s=40.0)) == sorted(f"w{i}" for i in range(1000) if i != 7)
    assert list(registry.workers) == ["w7"] and registry.prune(silent_s=40.0) == []


@aio
async def test_the_sweep_prunes_the_registry(tmp_path):
    clock = FakeClock()
    async with opened_node(tmp_path, clock=clock, worker_dead_s=5.0) as node:
        node.registry.touch("gone")
        clock.advance(19.0)
        node.registry.touch("here")
        await node._sweep()
        assert set(node.registry.workers) == {"gone", "here"}
        clock.advance(2.0)  # "gone" silent 21 s > 4 x worker_dead_s
        await node._sweep()
        assert set(node.registry.workers) == {"here"}


@aio
async def test_group_commits_are_bounded_in_bytes_and_the_wal_is_checkpointed(tmp_path, monkeypatch):
    monkeypatch.setattr(db, "MAX_BATCH_BYTES", 100 << 10)
    # 40 KiB bodies go to segment files: only their rows (a few pages a commit) grow the WAL
    monkeypatch.setattr(db, "WAL_LIMIT_BYTES", 64 << 10)
    async with opened_store(tmp_path / "jobs.db") as store:
        started, release = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()

        def hold(conn: object) -> None:  # keeps the writer busy while the inserts queue up
            loop.call_soon_threadsafe(started.set)
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result(5)

        held = store.db.queue(hold, durable=False)
        await started.wait()
        commits = store.db.commits
        inserts = [asyncio.create_task(store.insert(f"b{i:05d}", 1, os.urandom(40 << 10), 1.0)) for i in range(40)]
        await asyncio.sleep(0)  # each task queues its insert at its first step
        release.set()
        await held
        await asyncio.gather(*inserts)
        assert store.db.commits - commits >= 1 + 40 // 2  # at most two 40 KiB bodies per 100 KiB commit
        assert store.db.checkpoints >= 1
        assert os.stat(f"{store.path}-wal").st_size <= (64 + 64) << 10
