"""worker.client.ServerClient against a scripted internal API on a loopback port: lease framing,
reports naming leases, 409 (drop what is refused, send the rest), 413 (split, send in parts)."""

from __future__ import annotations

import contextlib

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from common import http
from common.http import AiohttpTransport
from common.wire import pack_lease
from tests.unit.fake_http_server import Reply, error, serving
from tests.unit.support import aio
from worker.client import ServerClient

DIGEST_HEX = "ab" * 64


class Reports:
    """/internal/complete, /heartbeat, /release as a server answers them: a request naming a work
    id in `refuse` is refused whole (409 listing them); one with more than `max_entries` entries
    is refused as too large (413). After `loop_after` requests it answers 500 (a client in a loop)."""

    def __init__(self, *, refuse=(), max_entries: int = 10_000, loop_after: int = 60) -> None:
        self.refuse = set(refuse)
        self.max_entries = max_entries
        self.loop_after = loop_after
        self.requests: list[tuple[str, int, list[str]]] = []
        self.taken: list[str] = []  # work ids of results and failures accepted, in order

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        call = request.path.rsplit("/", 1)[1]
        entries = body.get("leases", []) + body.get("results", []) + body.get("failures", [])
        ids = [e["work_id"] for e in entries]
        assert all(e["lease_id"] == "lease-" + e["work_id"] for e in entries)
        status = 200
        if len(self.requests) >= self.loop_after:
            status = 500
        elif len(entries) > self.max_entries:
            status = 413
        elif self.refuse & set(ids):
            status = 409
        self.requests.append((call, status, ids))
        if status == 409:
            rejected = [{"work_id": w, "reason": "not yours"} for w in ids if w in self.refuse]
            return web.json_response({"error": "not yours", "rejected": rejected}, status=409)
        if status != 200:
            return web.json_response({"error": "no"}, status=status)
        if call == "complete":
            self.taken += ids
            return web.json_response({"accepted": len(body["results"]), "duplicates": 0})
        if call == "heartbeat":
            return web.json_response({"lost": [], "lease_s": 30.0})
        return web.json_response({"released": len(ids)})


@contextlib.asynccontextmanager
async def client_for(reports: Reports):
    app = web.Application()
    app.router.add_post("/internal/{call}", reports.handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    transport = AiohttpTransport()
    try:
        yield ServerClient(str(server.make_url("")), "dw1.credential", "w1", transport)
    finally:
        await transport.close()
        await server.close()


def report(n: int, value: str = DIGEST_HEX) -> tuple[str, str, str]:
    return f"a.{n}.abcdef", f"lease-a.{n}.abcdef", value


def held(n: int) -> tuple[str, str]:
    return f"a.{n}.abcdef", f"lease-a.{n}.abcdef"


@aio
async def test_a_lease_answer_is_unpacked_and_a_malformed_one_is_unavailable():
    header = {
        "lease_s": 12.0,
        "more": False,
        "jobs": [{"work_id": "a.1.abcdef", "lease_id": "L1", "iterations": 5, "size": 3}],
    }
    good = Reply(body=b"".join(pack_lease(header, [b"abc"])))
    older = Reply(body=b"".join(pack_lease({k: v for k, v in header.items() if k != "more"}, [b"abc"])))
    bad = Reply(body=b"".join(pack_lease({**header, "jobs": [{"work_id": "a.1.abcdef", "size": 3}]}, [b"abc"])))
    bad_more = Reply(body=b"".join(pack_lease({**header, "more": "no"}, [b"abc"])))
    async with serving(good, older, bad, bad_more) as fake:
        transport = AiohttpTransport()
        try:
            client = ServerClient(fake.url, "dw1.credential", "w7", transport)
            lease_s, (job,), more = await client.lease(4, 1.5)
            assert (lease_s, more, job.work_id, job.lease_id, job.iterations, job.body) == (
                12.0,
                False,
                "a.1.abcdef",
                "L1",
                5,
                b"abc",
            )
            assert job.held == ("a.1.abcdef", "L1") and job.server == fake.url
            # a server from before "more": jobs in the answer mean there may be more
            assert (await client.lease(4, 0)).more is True
            for _ in range(2):  # no lease id: not a lease; "more" not a boolean
                with pytest.raises(http.Unavailable):
                    await client.lease(4, 0)
        finally:
            await transport.close()
        hit = fake.hits[0]
        assert hit.path_qs == "/internal/lease?max=4&wait=1.500"
        assert (hit.headers["Authorization"], hit.headers["X-Worker-Id"]) == ("Bearer dw1.credential", "w7")


@aio
async def test_complete_sends_work_and_lease_ids_and_drops_only_refused_entries():
    reports = Reports(refuse={"a.2.abcdef", "a.4.abcdef"})
    async with client_for(reports) as client:
        accepted = await client.complete([report(1), report(2), report(3)], [report(4, "oom"), report(5, "oom")], {})
    assert accepted == 2
    assert [(status, ids) for _, status, ids in reports.requests] == [
        (409, ["a.1.abcdef", "a.2.abcdef", "a.3.abcdef", "a.4.abcdef", "a.5.abcdef"]),
        (200, ["a.1.abcdef", "a.3.abcdef", "a.5.abcdef"]),
    ]


@aio
async def test_a_report_refused_whole_sends_nothing_more_and_an_unexplained_409_is_an_error():
    reports = Reports(refuse={"a.1.abcdef"})
    async with client_for(reports) as client:
        assert await client.complete([report(1)], [], {}) == 0  # all refused: nothing left to send
    assert [status for _, status, _ in reports.requests] == [409]
    async with serving(error(409, "conflict"), Reply(body={"rejected": "?"}, status=409)) as fake:
        transport = AiohttpTransport()
        try:
            client = ServerClient(fake.url, "dw1.credential", "w1", transport)
            for _ in range(2):  # no list of refused entries: nothing to drop, so no resend
                with pytest.raises(http.Refused):
                    await client.complete([report(1)], [], {})
        finally:
            await transport.close()
        assert len(fake.hits) == 2


@aio
async def test_a_batch_of_results_refused_as_too_large_is_split_in_halves():
    reports = Reports(max_entries=2)
    async with client_for(reports) as client:
        assert await client.complete([report(n) for n in range(1, 8)], [], {}) == 7
    assert sorted(reports.taken) == sorted(f"a.{n}.abcdef" for n in range(1, 8))  # each once
    assert [len(ids) for _, status, ids in reports.requests if status == 413] == [7, 3, 4]


@aio
async def test_a_too_large_batch_with_a_single_failure_is_split_too():
    reports = Reports(max_entries=1)
    async with client_for(reports) as client:
        await client.complete([report(1), report(2)], [report(3, "oom")], {})
    assert sorted(reports.taken) == ["a.1.abcdef", "a.2.abcdef", "a.3.abcdef"]


@aio
async def test_heartbeat_reports_refused_entries_as_lost_and_release_sends_the_rest():
    reports = Reports(refuse={"a.2.abcdef"})
    async with client_for(reports) as client:
        assert await client.heartbeat([held(1), held(2), held(3)], {"busy": True}) == [held(2)]
        await client.release([held(1), held(2), held(3)], {})
        reports.refuse = {"a.1.abcdef"}
        with pytest.raises(http.Refused):
            await client.release([held(1)], {})  # nothing left: the refusal stands
    assert [(call, status, ids) for call, status, ids in reports.requests] == [
        ("heartbeat", 409, ["a.1.abcdef", "a.2.abcdef", "a.3.abcdef"]),
        ("release", 409, ["a.1.abcdef", "a.2.abcdef", "a.3.abcdef"]),
        ("release", 200, ["a.1.abcdef", "a.3.abcdef"]),
        ("release", 409, ["a.1.abcdef"]),
    ]
