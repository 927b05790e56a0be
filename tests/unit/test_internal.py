"""server.internal: the worker API's request parsing, and the real app (auth, handlers, service)
served on a loopback port to the real worker client: leases, reports, the 409 it answers."""

from __future__ import annotations

import contextlib

import pytest
from aiohttp.test_utils import TestServer

from common import http
from common.credentials import Role, derive
from common.http import AiohttpTransport
from native.reference import chain
from server.app import build_app
from server.errors import BadRequest
from server.internal import MAX_LEASE_ID, digests, entries
from server.service import Entry
from tests.unit.service_support import Upload
from tests.unit.support import SECRET, aio, opened_node
from worker.client import ServerClient

HEX = "ab" * 64


def test_entries_take_objects_with_a_work_id_and_a_lease_id():
    body = {"leases": [{"work_id": "a.1.abcdef", "lease_id": "L1", "extra": 1}]}
    assert entries(body, "leases") == [Entry("a.1.abcdef", "L1")]
    assert entries({}, "leases") == []
    results = {"results": [{"work_id": "a.1.abcdef", "lease_id": "L1", "result": HEX}]}
    assert digests(entries(results, "results", "result")) == [Entry("a.1.abcdef", "L1", bytes.fromhex(HEX))]


@pytest.mark.parametrize(
    "raw",
    [
        "a.1.abcdef",
        {"work_ids": []},
        ["a.1.abcdef"],
        [{"work_id": "a.1.abcdef"}],  # no lease id: refused, not ignored
        [{"work_id": "a.1.abcdef", "lease_id": ""}],
        [{"work_id": "a.1.abcdef", "lease_id": "L" * (MAX_LEASE_ID + 1)}],
        [{"work_id": "a.1.abcdef", "lease_id": 7}],
        [{"work_id": 1, "lease_id": "L1"}],
    ],
)
def test_malformed_entries_are_a_bad_request(raw):
    with pytest.raises(BadRequest):
        entries({"leases": raw}, "leases")


@pytest.mark.parametrize("value", [None, 5, "zz" * 64, HEX[:-2], HEX + "00", HEX.upper() + "g"])
def test_a_result_must_be_a_digest(value):
    with pytest.raises(BadRequest):
        digests(
            entries({"results": [{"work_id": "a.1.abcdef", "lease_id": "L1", "result": value}]}, "results", "result")
        )


@contextlib.asynccontextmanager
async def worker_clients(tmp_path, *workers: str):
    async with opened_node(tmp_path) as node:
        server = TestServer(build_app(node), host="127.0.0.1", port=0)
        await server.start_server()
        transport = AiohttpTransport()
        url = str(server.make_url("")).rstrip("/")
        try:
            yield node, [ServerClient(url, derive(SECRET, Role.WORKER, w), w, transport) for w in workers]
        finally:
            await transport.close()
            await server.close()


@aio
async def test_the_worker_client_and_the_server_agree_on_leases_and_reports(tmp_path):
    async with worker_clients(tmp_path, "w1", "w2") as (node, (w1, w2)):
        for body in (b"one", b"two"):
            await node.service.enqueue(2, Upload(body))
        _, (mine,), more = await w1.lease(1, 0)
        assert more  # "two" is still queued
        _, (theirs,), more = await w2.lease(1, 0)
        assert not more
        assert await w1.heartbeat([mine.held], {"busy": True}) == []
        digest = chain(mine.body, 2).hex()
        assert await w1.complete([(*mine.held, digest)], [], {"rate": 10.0}) == 1
        # a report naming w2's lease: the server refuses it (409) listing it, the client drops it
        assert await w1.complete([(*theirs.held, digest)], [], {}) == 0
        with pytest.raises(http.Refused) as info:
            await w1.release([theirs.held], {})
        assert info.value.status == 409 and theirs.work_id in info.value.body.decode()
        assert await w1.heartbeat([theirs.held], {}) == [theirs.held]  # not w1's: lost to it
        assert node.scheduler.held_by("w2") == [int(theirs.work_id.split(".")[1])]
        record = node.store.get(int(mine.work_id.split(".")[1]))
        assert (record.result.hex(), record.worker) == (digest, "w1")
