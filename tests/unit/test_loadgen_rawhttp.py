"""The load generator's own HTTP/1.1 client as a common.http Transport, against real servers."""

from __future__ import annotations

import pytest

from client.loadgen.rawhttp import RawHttpTransport, parse_head
from common.http import HttpClient, Unavailable
from tests.unit.fake_http_server import Reply, dead_url, error, serving, silent_url
from tests.unit.support import aio


def test_response_heads_are_parsed_strictly():
    status, headers = parse_head(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\nX-A:b:c")
    assert status == 503 and headers["retry-after"] == "2" and headers["x-a"] == "b:c"
    for bad in (b"SSH-2.0-OpenSSH", b"HTTP/1.1 abc OK", b""):
        with pytest.raises(ValueError):
            parse_head(bad)


async def send(transport: RawHttpTransport, method: str, url: str, body: bytes | None = None, timeout_s: float = 5.0):
    return await transport.send(method, url, body=body, headers={"X-Test": "1"}, timeout_s=timeout_s)


@aio
async def test_requests_reuse_one_keep_alive_connection():
    async with serving(Reply(200, {"work_id": "a"}, {"X-Thing": "y"}), Reply(404, b"")) as fake:
        transport = RawHttpTransport(connect_timeout_s=5)
        try:
            first = await send(transport, "PUT", fake.url + "/enqueue?iterations=1", b"body")
            second = await send(transport, "GET", fake.url + "/work/a")
        finally:
            await transport.close()
    assert (first.status, first.json(), first.headers["x-thing"]) == (200, {"work_id": "a"}, "y")
    assert (second.status, second.body) == (404, b"")
    assert [(h.method, h.path_qs, h.body) for h in fake.hits] == [
        ("PUT", "/enqueue?iterations=1", b"body"),
        ("GET", "/work/a", b""),
    ]
    assert fake.hits[0].headers["X-Test"] == "1" and fake.hits[0].peer == fake.hits[1].peer


@aio
async def test_a_connection_the_server_closes_is_not_reused():
    async with serving(Reply(200, {}, {"Connection": "close"})) as fake:
        transport = RawHttpTransport(connect_timeout_s=5)
        try:
            for _ in range(3):
                assert (await send(transport, "GET", fake.url + "/x")).status == 200
        finally:
            await transport.close()
    assert len({h.peer for h in fake.hits}) == 3


@aio
async def test_no_connection_is_not_done_and_a_silent_server_is_a_lost_answer():
    transport = RawHttpTransport(connect_timeout_s=5)
    try:
        with pytest.raises(Unavailable) as refused:
            await send(transport, "PUT", dead_url() + "/enqueue", b"x")
        with silent_url() as silent, pytest.raises(Unavailable) as lost:
            await send(transport, "PUT", silent + "/enqueue", b"x", timeout_s=0.2)
    finally:
        await transport.close()
    assert refused.value.unreachable and refused.value.reason == "connection refused"
    assert not lost.value.not_done and lost.value.reason == "timed out" and lost.value.status is None


@aio
async def test_behind_http_client_the_policy_applies():
    async with serving(error(503, "queue is full", retry_after="1"), error(413, "too big")) as fake:
        transport = RawHttpTransport(connect_timeout_s=5)
        try:
            http = HttpClient(fake.url, transport)
            with pytest.raises(Unavailable) as busy:
                await http.call("PUT", "/enqueue", body=b"x", idempotent=False)
            with pytest.raises(Exception, match="HTTP 413: too big"):
                await http.call("PUT", "/enqueue", body=b"x", idempotent=False)
        finally:
            await transport.close()
    assert busy.value.not_done and busy.value.retry_after_s == 1.0 and busy.value.reason == "HTTP 503: queue is full"
