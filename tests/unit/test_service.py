"""server.service over a real node (store, scheduler, registry, hand-outs, peering) on a tmp dir;
the peer, where one is needed, is a second real node served on a loopback port."""

from __future__ import annotations

import asyncio

import pytest

from common.ids import WorkId
from server.errors import Conflict, NotFound, TooLarge, Unavailable
from server.jobs import State
from server.service import MAX_ERROR_CHARS, Entry, LeaseGrant
from tests.unit.fake_http_server import dead_url
from tests.unit.service_support import DIGEST, Upload, lease, lease_one, node_pair, pull, result
from tests.unit.support import aio, flush, opened_node


@aio
async def test_a_job_goes_enqueue_lease_complete_pull(tmp_path):
    async with opened_node(tmp_path, lease_s=12.0) as node:
        service = node.service
        work_id = (await service.enqueue(5, Upload(b"payload"))).work_id
        assert (work_id.server, work_id.seq) == ("a", 1)
        grant = await lease(service)
        assert grant.lease_s == 12.0
        assert [(j.work_id, j.iterations, j.body) for j in grant.jobs] == [(work_id, 5, b"payload")]
        (job,) = grant.jobs
        assert await service.complete("w1", [result(job)], [], {"rate": 1e6}) == {"accepted": 1, "duplicates": 0}
        # the same report again (a retry after a lost answer) is a duplicate, not an error
        assert await service.complete("w1", [result(job, bytes(64))], [], None) == {"accepted": 0, "duplicates": 1}
        (item,) = await pull(service, 10)
        assert item["work_id"] == str(work_id) and item["result"] == DIGEST.hex() and item["iterations"] == 5
        assert await pull(service, 10) == []  # handed out once
        status = await service.work(str(work_id), 0)
        assert (status["status"], status["result"]) == ("completed", DIGEST.hex())
        assert service.registry.workers["w1"].rate == 1e6


@aio
async def test_enqueue_refuses_a_body_announced_too_large_before_reading_it(tmp_path):
    async with opened_node(tmp_path, max_body_bytes=100) as node:
        upload = Upload(b"x" * 101)
        with pytest.raises(TooLarge) as info:
            await node.service.enqueue(1, upload)
        assert info.value.status == 413 and upload.reads == []
        unannounced = Upload(b"x" * 10, content_length=None)
        await node.service.enqueue(1, unannounced)
        assert unannounced.reads == [100]  # the read itself is bounded by the limit
        assert len(node.scheduler.queued) == 1


@aio
async def test_enqueue_answers_unavailable_when_full_or_closing(tmp_path):
    async with opened_node(tmp_path, max_queued=2) as node:
        service = node.service
        await service.enqueue(1, Upload(b"a"))
        await service.enqueue(1, Upload(b"b"))
        upload = Upload(b"c")
        with pytest.raises(Unavailable) as info:
            await service.enqueue(1, upload)
        assert (info.value.status, info.value.retry_after_s, upload.reads) == (503, 2, [])
        await lease(service, max_jobs=1)  # a leased job no longer counts as waiting
        await service.enqueue(1, Upload(b"c"))
        await lease(service, max_jobs=1)
        service.closing = True
        with pytest.raises(Unavailable) as info:
            await service.enqueue(1, Upload(b"d"))
        assert info.value.retry_after_s == 1
        with pytest.raises(Unavailable):
            service.health_report()


@aio
async def test_lease_hands_out_at_most_the_servers_batch_maximum(tmp_path):
    async with opened_node(tmp_path, lease_batch_max=2) as node:
        for body in (b"a", b"b", b"c"):
            await node.service.enqueue(1, Upload(body))
        grant = await lease(node.service, max_jobs=100)
        assert [j.body for j in grant.jobs] == [b"a", b"b"] and grant.more  # the worker may ask again at once
        jobs = grant.jobs
        assert all(len(j.lease_id) >= 16 for j in jobs) and jobs[0].lease_id != jobs[1].lease_id
        grant = await lease(node.service, wait_s=0.01)
        assert grant.jobs[0].body == b"c" and not grant.more  # drained: the worker may turn to the peer
        assert (await lease(node.service, wait_s=0.01)).jobs == []  # an empty long-poll is delivered too


@pytest.mark.parametrize("failure", [ConnectionResetError("worker gone"), asyncio.CancelledError()])
@aio
async def test_jobs_that_could_not_be_delivered_go_back_at_once(tmp_path, failure):
    async with opened_node(tmp_path) as node:
        work_id = (await node.service.enqueue(1, Upload(b"a"))).work_id

        async def deliver(grant: LeaseGrant) -> None:
            assert grant.jobs
            raise failure

        with pytest.raises(type(failure)):
            await node.service.lease("w1", 10, 0, deliver)
        assert list(node.scheduler.queued) == [work_id.seq] and not node.scheduler.leases
        await flush(node.store)
        record = node.store.get(work_id.seq)
        assert (record.state, record.attempts) == (State.QUEUED, 0)  # the attempt is refunded


@aio
async def test_reports_naming_other_servers_or_malformed_ids_are_refused_whole(tmp_path):
    # Was "complete ignores other servers and malformed ids" ({"accepted": 0}): since leases are
    # capabilities a report naming anything but this worker's lease is refused (409) whole.
    async with opened_node(tmp_path) as node:
        await node.service.enqueue(1, Upload(b"a"))
        job = await lease_one(node.service)
        foreign = str(WorkId("b", job.work_id.seq, job.work_id.nonce))
        for bad in (foreign, "garbage", f"{job.work_id}\n", "a.1"):
            with pytest.raises(Conflict) as info:
                await node.service.complete("w1", [Entry(bad, job.lease_id, DIGEST)], [], None)
            assert info.value.status == 409
            assert info.value.details["rejected"] == [
                {"work_id": bad, "reason": "not a work id of server a"},
            ]
        with pytest.raises(Conflict):
            await node.service.complete("w1", [], [Entry(foreign, job.lease_id, "x")], None)
        assert node.scheduler.held_by("w1") == [job.work_id.seq]
        await flush(node.store)
        assert node.store.get(job.work_id.seq).state is State.RUNNING


@aio
async def test_reported_failures_retry_then_fail_with_a_bounded_error(tmp_path):
    async with opened_node(tmp_path, max_attempts=2) as node:
        service = node.service
        work_id = (await service.enqueue(1, Upload(b"a"))).work_id
        first = await lease_one(service)
        assert await service.complete("w1", [], [result(first, "first")], None) == {"accepted": 0, "duplicates": 0}
        assert list(node.scheduler.queued) == [work_id.seq]
        second = await lease_one(service)
        await service.complete("w1", [], [result(second, "x" * 5000)], None)
        record = node.store.get(work_id.seq)
        assert record.state is State.FAILED
        assert record.error == "worker error: " + "x" * MAX_ERROR_CHARS


@aio
async def test_work_not_found_for_bad_unknown_and_wrong_nonce_ids(tmp_path):
    async with opened_node(tmp_path) as node:
        work_id = (await node.service.enqueue(1, Upload(b"a"))).work_id
        assert (await node.service.work(str(work_id), 0))["status"] == "queued"
        wrong_nonce = str(WorkId("a", work_id.seq, "zzzzzz" if work_id.nonce != "zzzzzz" else "yyyyyy"))
        huge = f"a.{2**63}.{work_id.nonce}"  # beyond SQLite's integers: no job, not an error
        for bad in ("garbage", "a.99.abcdef", wrong_nonce, f"{work_id} ", f"{work_id}\n", huge, "b.1.abcdef"):
            with pytest.raises(NotFound):
                await node.service.work(bad, 0)  # the last: another server's id, and no peer to ask


@aio
async def test_work_long_polls_until_the_job_finishes(tmp_path):
    async with opened_node(tmp_path) as node:
        work_id = (await node.service.enqueue(1, Upload(b"a"))).work_id
        waiting = asyncio.ensure_future(node.service.work(str(work_id), 60.0))
        job = await lease_one(node.service)
        assert not waiting.done()
        await node.service.complete("w1", [result(job)], [], None)
        status = await asyncio.wait_for(waiting, 5.0)
        assert status["status"] == "completed"


@aio
async def test_work_of_a_peer_job_asks_the_peer(tmp_path):
    async with node_pair(tmp_path) as (a, b):
        theirs = (await b.service.enqueue(3, Upload(b"b-body"))).work_id
        status = await a.service.work(str(theirs), 0)
        assert status == await b.service.work(str(theirs), 0)
        assert (status["work_id"], status["status"]) == (str(theirs), "queued")
        with pytest.raises(NotFound):
            await a.service.work(str(WorkId("b", theirs.seq + 1, theirs.nonce)), 0)
    async with opened_node(tmp_path / "alone", peer=dead_url()) as lonely:
        with pytest.raises(Unavailable) as info:
            await lonely.service.work("b.7.abcdef", 0)
        assert info.value.retry_after_s == 5


@aio
async def test_pull_completed_merges_the_peers_results_newest_first(tmp_path):
    async with node_pair(tmp_path) as (a, b):
        ours, theirs = [], []
        for node, made in ((a, ours), (b, theirs)):
            for _ in range(2):
                made.append((await node.service.enqueue(1, Upload(b"x"))).work_id)
        # completed at: b's first 100, a's first 200, b's second 300, a's second 400
        for at, (node, work_id) in enumerate(((b, theirs[0]), (a, ours[0]), (b, theirs[1]), (a, ours[1])), 1):
            node.clock.wall_now = 100.0 * at
            job = await lease_one(node.service)
            assert job.work_id == work_id
            await node.service.complete("w1", [result(job)], [], None)
        items = await pull(a.service, 3)  # own first: both of a's, then the newest one of b's
        assert [item["work_id"] for item in items] == [str(ours[1]), str(theirs[1]), str(ours[0])]
        assert [item["work_id"] for item in await pull(a.service, 5)] == [str(theirs[0])]
        assert await pull(a.service, 5) == []
        reply = await b.service.peer_reserve(5)  # the peer API hands out only the server's own
        assert reply["items"] == [] and isinstance(reply["handout"], str)


@aio
async def test_status_and_health(tmp_path):
    async with opened_node(tmp_path) as node:
        service = node.service
        await service.enqueue(1, Upload(b"a"))
        await service.enqueue(1, Upload(b"b"))
        job = await lease_one(service)
        await service.complete("w1", [result(job)], [], None)
        assert service.health_report() == {"ok": True, "server": "a"}
        status = await service.status(detail=False)
        assert {k: status[k] for k in ("server", "queued", "running", "completed", "failed", "peer", "closing")} == {
            "server": "a",
            "queued": 1,
            "running": 0,
            "completed": 1,
            "failed": 0,
            "peer": None,
            "closing": False,
        }
        assert status["launcher"] == {"kind": "none"} and status["workers_reporting"] == 1
        assert "store" not in status and "url" not in status  # operator details only
        detail = await service.status(detail=True)
        assert detail["store"]["commits"] > 0 and detail["url"] == "http://127.0.0.1:8001"
        node.health.failing("lease sweep", "StoreError", "disk full at /var/lib/x")
        report = service.health_report()
        assert report["ok"] is False and report["status"] == "degraded"
        assert report["problems"]["lease sweep"]["error"] == "StoreError"
        assert "detail" not in report["problems"]["lease sweep"]  # no raw error text in public
