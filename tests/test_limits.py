"""Bounded resources against real servers: slow clients are cut off within the configured bounds,
long-polls and steady uploads are not, the connection cap keeps room for workers and the peer, and
max_queued holds exactly under concurrent uploads.

The servers run with small bounds; every wait has a deadline with a margin for a loaded machine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time

import pytest

from tests.cluster import Cluster, http, wait_for, worker_headers
from tests.unit.support import aio
from tests.unit.test_limits import closed_after, connect, request, response, trickle

HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 1.5
KEEPALIVE_S = 3.0
MAX_QUEUED = 8
MARGIN_S = 3.0  # how late a cut-off may come on a loaded machine


@pytest.fixture(scope="module")
def bounded(tmp_path_factory):
    cluster = Cluster(
        tmp_path_factory.mktemp("bounded"),
        launcher="none",
        header_timeout_s=HEADER_TIMEOUT_S,
        body_timeout_s=BODY_TIMEOUT_S,
        body_min_bytes_per_s=65536,
        keepalive_s=KEEPALIVE_S,
        max_queued=MAX_QUEUED,
    ).start()
    yield cluster
    cluster.close()


def queued(server) -> int:
    return server.status()["queued"]


@aio
async def test_a_client_sending_a_header_byte_a_second_is_cut_off(bounded):
    reader, writer = await connect(bounded.a.port)
    sender = asyncio.create_task(trickle(writer, request("GET", "/healthz"), every_s=1.0))
    elapsed, received = await closed_after(reader, HEADER_TIMEOUT_S + MARGIN_S)
    sender.cancel()
    assert elapsed >= HEADER_TIMEOUT_S - 0.5 and received == b""


@aio
async def test_a_connection_that_never_sends_is_closed_after_keepalive(bounded):
    reader, _writer = await connect(bounded.a.port)
    elapsed, received = await closed_after(reader, KEEPALIVE_S + MARGIN_S)
    assert elapsed >= KEEPALIVE_S - 0.5 and received == b""


@aio
async def test_a_stalled_upload_is_answered_408_and_nothing_is_queued(bounded):
    before = queued(bounded.a)
    reader, writer = await connect(bounded.a.port)
    writer.write(request("PUT", "/enqueue?iterations=1", b"s" * 5000)[:-4000])
    status, headers, body = await asyncio.wait_for(response(reader), BODY_TIMEOUT_S + MARGIN_S)
    assert (status, headers["content-type"]) == (408, "application/json; charset=utf-8"), body
    assert "too slow" in json.loads(body)["error"]
    await closed_after(reader, MARGIN_S)
    assert queued(bounded.a) == before


@aio
async def test_an_upload_below_the_minimum_rate_is_cut_off_though_bytes_keep_coming(bounded):
    before = queued(bounded.a)
    reader, writer = await connect(bounded.a.port)
    writer.write(request("PUT", "/enqueue?iterations=1", b"t" * 10_000)[:-10_000])
    sender = asyncio.create_task(trickle(writer, b"t" * 10_000, every_s=0.25))  # 4 bytes/s, each read in time
    elapsed, received = await closed_after(reader, BODY_TIMEOUT_S + MARGIN_S)
    sender.cancel()
    assert received.startswith(b"HTTP/1.1 408 ") and elapsed >= BODY_TIMEOUT_S - 0.5
    assert queued(bounded.a) == before


@aio
async def test_a_steady_1_mib_upload_at_200_kb_per_s_is_taken(bounded):
    reader, writer = await connect(bounded.a.port)
    data = os.urandom(1 << 20)
    writer.write(request("PUT", "/enqueue?iterations=1", data)[: -len(data)])
    started = time.monotonic()
    for at in range(0, len(data), 20_000):  # 20 KB every 0.1 s
        writer.write(data[at : at + 20_000])
        await writer.drain()
        await asyncio.sleep(0.1)
    status, _, body = await asyncio.wait_for(response(reader), MARGIN_S)
    assert status == 200, body
    assert time.monotonic() - started > 4.0  # it really took longer than every timeout
    work_id = json.loads(body)["work_id"]
    assert (await asyncio.to_thread(bounded.a.work, work_id)).json()["status"] == "queued"


@aio
async def test_long_polls_outlast_every_read_timeout(bounded):
    work_id = bounded.a.enqueue(b"never computed", 1)
    wait_s = KEEPALIVE_S + 1.5
    headers = worker_headers(bounded.token, "limits-test")
    started = time.monotonic()
    status_poll = asyncio.to_thread(bounded.b.work, work_id, wait_s)  # proxied to its owner, a
    lease_poll = asyncio.to_thread(http, "POST", f"{bounded.b.url}/internal/lease?max=1&wait={wait_s}", None, headers)
    work, lease = await asyncio.gather(status_poll, lease_poll)
    assert time.monotonic() - started >= wait_s - 0.5
    assert (work.status, work.json()["status"]) == (200, "queued")
    assert lease.status == 200  # an empty lease after the whole wait


@aio
async def test_max_queued_is_exact_under_concurrent_uploads(bounded):
    before = queued(bounded.a)
    assert before < MAX_QUEUED
    uploads, sent = 30, asyncio.Event()
    started: list[int] = []
    body = b"u" * 4000

    async def upload() -> int:
        reader, writer = await connect(bounded.a.port)
        writer.write(request("PUT", "/enqueue?iterations=1", body)[:-2000])  # all are in flight at once
        await writer.drain()
        started.append(1)
        if len(started) == uploads:
            sent.set()
        await sent.wait()
        with contextlib.suppress(ConnectionError):  # a refused upload may be answered before this
            writer.write(body[-2000:])
        status = (await response(reader))[0]
        writer.close()
        return status

    statuses = await asyncio.gather(*(upload() for _ in range(uploads)))
    assert statuses.count(200) == MAX_QUEUED - before
    assert statuses.count(503) == uploads - statuses.count(200)
    assert queued(bounded.a) == MAX_QUEUED


@aio
async def test_the_connection_cap_keeps_room_for_workers_and_recovers(tmp_path):
    cap, reserved = 12, 4
    cluster = Cluster(tmp_path, launcher="none", max_connections=cap, reserved_connections=reserved, keepalive_s=60)
    cluster.start()
    try:
        a = cluster.a.port
        # The peer holds a connection or two to a; clients fill the rest of the public share.
        public = [await connect(a) for _ in range(cap - reserved)]
        statuses = []
        for reader, writer in public:
            writer.write(request("GET", "/healthz"))
            statuses.append((await asyncio.wait_for(response(reader), MARGIN_S))[0])
        assert statuses[: cap - reserved - 2] == [200] * (cap - reserved - 2), statuses
        assert set(statuses) <= {200, 503}
        # Idle connections fill the reserve; those beyond the cap are answered at once without sending.
        idle = [await connect(a) for _ in range(cap + 2)]

        async def answered(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes] | None:
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(response(reader), 1.0)
            return None

        answers = await asyncio.gather(*(answered(reader) for reader, _ in idle))
        refused = [answer for answer in answers if answer is not None]
        assert len(refused) >= 2, answers
        for status, headers, body in refused:
            assert (status, headers["retry-after"]) == (503, "1") and b"max_connections 12" in body
        admitted = [connection for connection, answer in zip(idle, answers, strict=True) if answer is None]
        assert len(admitted) >= 2
        # The last two came in beyond the public share: a worker is served there, a client refused.
        (worker_reader, worker_writer), (client_reader, client_writer) = admitted[-2:]
        heartbeat = json.dumps({"leases": []}).encode()
        credentials = "".join(f"{k}: {v}\r\n" for k, v in worker_headers(cluster.token, "w-cap").items())
        worker_writer.write(request("POST", "/internal/heartbeat", heartbeat, credentials))
        assert (await asyncio.wait_for(response(worker_reader), MARGIN_S))[0] == 200
        client_writer.write(request("GET", "/healthz"))
        status, headers, _ = await asyncio.wait_for(response(client_reader), MARGIN_S)
        assert (status, headers["retry-after"], headers["connection"]) == (503, "1", "close")
        # The clients admitted first are not affected.
        public[0][1].write(request("GET", "/healthz"))
        assert (await asyncio.wait_for(response(public[0][0]), MARGIN_S))[0] == 200
        for _, writer in public + idle:
            writer.close()
        served = lambda: http("GET", cluster.a.url + "/healthz").status == 200  # noqa: E731
        await asyncio.to_thread(wait_for, served, MARGIN_S, "a new client connection served again")
    finally:
        cluster.close()
