"""The bench's enqueue: it moves on or retries only where common.http's policy allows, with both
HTTP clients, against real servers on loopback ports."""

from __future__ import annotations

import pytest

from client.loadgen.config import CLIENTS, BenchConfig
from client.loadgen.enqueue import BenchError, Enqueuer, JobRefused, NoServer
from client.loadgen.transports import make_transport
from common.http import HttpClient
from tests.unit.fake_http_server import Reply, dead_url, error, serving, silent_url
from tests.unit.support import aio


async def put(urls: list[str], client: str, silent: str = "") -> tuple[tuple[int, str], Enqueuer]:
    """Enqueuer.put over `urls` from the first; the `silent` one (never answers) gets a short
    timeout, the rest a long one, so that a busy machine cannot make a good server look lost."""
    cfg = BenchConfig(servers=tuple(urls), client=client, http_timeout_s=10.0)
    transport = make_transport(cfg, 4)
    try:
        clients = [HttpClient(u, transport, timeout_s=0.3 if u == silent else cfg.http_timeout_s) for u in urls]
        enqueuer = Enqueuer(clients, 1)
        ack = await enqueuer.put(0, b"body")
        return (ack.server, ack.work_id), enqueuer
    finally:
        await transport.close()


@pytest.mark.parametrize("client", CLIENTS)
@aio
async def test_a_server_that_cannot_be_reached_is_skipped(client):
    async with serving(Reply(200, {"work_id": "s1.1.a"})) as good:
        (index, work_id), _ = await put([dead_url(), good.url], client)
    assert (index, work_id) == (1, "s1.1.a")
    assert good.hits[0].path_qs == "/enqueue?iterations=1" and good.hits[0].body == b"body"


@pytest.mark.parametrize("client", CLIENTS)
@aio
async def test_a_full_queue_is_retried_on_the_same_server_after_retry_after(client):
    full_once = (error(503, "queue is full", retry_after="0.01"), Reply(200, {"work_id": "s1.1.a"}))
    async with serving(Reply(200, {"work_id": "x"})) as other, serving(*full_once) as busy:
        (index, work_id), enqueuer = await put([busy.url, other.url], client)
    assert (index, work_id, enqueuer.retries, len(busy.hits), other.hits) == (0, "s1.1.a", 1, 2, [])


@pytest.mark.parametrize("client", CLIENTS)
@aio
async def test_what_stops_the_bench(client):
    async with (
        serving(Reply(200, {})) as good,
        serving(error(413, "body exceeds the limit")) as small,
        serving(error(500, "boom")) as broken,
    ):
        with pytest.raises(JobRefused, match="refused a job: HTTP 413: body exceeds the limit") as refused:
            await put([small.url, good.url], client)
        with pytest.raises(BenchError, match=f"^{broken.url} failed an enqueue: HTTP 500: boom$") as failed:
            await put([broken.url, good.url], client)
        with silent_url() as silent, pytest.raises(BenchError) as lost:
            await put([silent, good.url], client, silent=silent)
        a, b = dead_url(), dead_url()
        with pytest.raises(NoServer) as nobody:
            await put([a, b], client)
    assert good.hits == []  # nothing was sent twice
    kinds = (refused.value.kind, failed.value.kind, lost.value.kind, nobody.value.kind)
    assert kinds == ("refused", "lost", "lost", "unreachable")
    assert str(lost.value) == f"{silent} gave no answer to an enqueue: timed out"
    assert str(nobody.value) == f"no server accepts jobs: {a}: connection refused; {b}: connection refused"
