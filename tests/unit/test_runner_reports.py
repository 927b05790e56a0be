"""worker.runner with the real worker.client over HTTP, against a fake internal API on a loopback
port that refuses reports as a real server may: 409 naming entries that are not the worker's,
413 for a batch above a size. Nothing the worker computed may be lost on the way."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from aiohttp import web
from aiohttp.test_utils import TestServer

from common.http import AiohttpTransport
from common.wire import LEASE_CONTENT_TYPE, pack_lease
from native.reference import chain
from tests.unit.support import aio, until
from worker.client import ServerClient
from worker.config import WorkerSettings
from worker.runner import Worker


def hasher(jobs: Sequence[tuple[bytes, int]]) -> list[bytes]:
    return [chain(body, iterations) for body, iterations in jobs]


class FakeInternalApi:
    """One server's internal API: hands out `jobs`, takes reports. A report naming a work id in
    `refuse` is refused whole with 409 listing those ids; one with more than `max_entries`
    entries is refused with 413."""

    def __init__(self, count: int, *, refuse: Sequence[int] = (), max_entries: int = 10_000) -> None:
        self.jobs = [
            (f"a.{n}.abcdef", f"lease-{n}-0123456789abcdef", f"body-{n}".encode()) for n in range(1, count + 1)
        ]
        self.expected = {work_id: chain(body, 1).hex() for work_id, _, body in self.jobs}
        self.refuse = {self.jobs[i - 1][0] for i in refuse}
        self.max_entries = max_entries
        self.handed = False
        self.requests: list[tuple[int, list[str]]] = []  # (status answered, work ids in the request)
        self.completed: dict[str, str] = {}
        self.failures: dict[str, str] = {}

    async def lease(self, request: web.Request) -> web.StreamResponse:
        jobs = [] if self.handed else self.jobs
        self.handed = True
        if not jobs:
            await asyncio.sleep(float(request.query["wait"]))
        header = {
            "lease_s": 30.0,
            "jobs": [{"work_id": w, "lease_id": lease, "iterations": 1, "size": len(b)} for w, lease, b in jobs],
        }
        body = b"".join(pack_lease(header, [b for _, _, b in jobs]))
        return web.Response(body=body, content_type=LEASE_CONTENT_TYPE)

    async def complete(self, request: web.Request) -> web.Response:
        body = await request.json()
        entries = body["results"] + body["failures"]
        ids = [e["work_id"] for e in entries]
        leases = {w: lease for w, lease, _ in self.jobs}
        assert all(leases[e["work_id"]] == e["lease_id"] for e in entries)
        if len(entries) > self.max_entries:
            self.requests.append((413, ids))
            return web.json_response({"error": "body too large"}, status=413)
        refused = [w for w in ids if w in self.refuse]
        if refused:
            self.requests.append((409, ids))
            rejected = [{"work_id": w, "reason": "lease issued to another worker"} for w in refused]
            return web.json_response({"error": "not yours", "rejected": rejected}, status=409)
        self.requests.append((200, ids))
        for e in body["results"]:
            self.completed.setdefault(e["work_id"], e["result"])
        self.failures.update((e["work_id"], e["error"]) for e in body["failures"])
        return web.json_response({"accepted": len(body["results"]), "duplicates": 0})

    async def heartbeat(self, request: web.Request) -> web.Response:
        return web.json_response({"lost": [], "lease_s": 30.0})

    async def release(self, request: web.Request) -> web.Response:
        return web.json_response({"released": 0})


@contextlib.asynccontextmanager
async def serving(api: FakeInternalApi):
    app = web.Application()
    app.router.add_post("/internal/lease", api.lease)
    app.router.add_post("/internal/complete", api.complete)
    app.router.add_post("/internal/heartbeat", api.heartbeat)
    app.router.add_post("/internal/release", api.release)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def run_worker(api: FakeInternalApi, done, what: str) -> int:
    async with serving(api) as url:
        settings = WorkerSettings(server=[url], worker_id="w1", threads=1, idle_exit_s=0.0, lease_wait_s=0.05)
        worker = Worker(settings, "dw1.credential", hasher=hasher, lanes=16)
        transport = AiohttpTransport()
        try:
            task = asyncio.ensure_future(worker.run([ServerClient(url, "dw1.credential", "w1", transport)]))
            await until(lambda: done() or task.done(), 8.0, what)
            assert not task.done(), "the worker exited before " + what
            worker.stop("test over")
            return await asyncio.wait_for(task, 8.0)
        finally:
            await transport.close()


@aio
async def test_entries_refused_with_409_are_dropped_and_the_rest_is_sent_again():
    api = FakeInternalApi(6, refuse=[2, 5])
    assert await run_worker(api, lambda: len(api.completed) == 4, "the four that are the worker's") == 0
    refused = {"a.2.abcdef", "a.5.abcdef"}
    assert api.completed == {w: d for w, d in api.expected.items() if w not in refused}
    statuses = [status for status, _ in api.requests]
    assert statuses == [409, 200]  # one batch: refused whole, then the rest, once
    assert set(api.requests[1][1]) == set(api.expected) - refused


@aio
async def test_a_batch_refused_as_too_large_is_split_until_it_fits():
    api = FakeInternalApi(7, max_entries=2)
    assert await run_worker(api, lambda: len(api.completed) == 7, "every result") == 0
    assert api.completed == api.expected  # nothing dropped, every digest right
    assert all(len(ids) <= 2 for status, ids in api.requests if status == 200)
    assert [status for status, _ in api.requests].count(413) >= 2  # 7 -> 3 + 4 -> ...
    sent = [w for status, ids in api.requests if status == 200 for w in ids]
    assert sorted(sent) == sorted(api.expected)  # each sent once


@aio
async def test_a_split_batch_still_drops_entries_refused_with_409():
    api = FakeInternalApi(5, refuse=[3], max_entries=2)
    assert await run_worker(api, lambda: len(api.completed) == 4, "the four that are the worker's") == 0
    assert api.completed == {w: d for w, d in api.expected.items() if w != "a.3.abcdef"}
