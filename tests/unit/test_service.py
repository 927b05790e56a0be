"""server.service over a real Store, Scheduler, Registry and Loans; a small fake stands in for the peer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from common import http
from common.ids import WorkId
from server.config import ServerSettings
from server.errors import BadRequest, NotFound, TooLarge, Unavailable
from server.jobs import State
from server.loans import Loans
from server.registry import Registry
from server.scheduler import Scheduler
from server.service import MAX_ERROR_CHARS, LeaseGrant, Service
from tests.unit.support import aio, flush, opened_store

DIGEST = bytes(range(64))


class Upload:
    """A request body as the service sees it; remembers whether it was read."""

    def __init__(self, body: bytes, content_length: int | None = -1) -> None:
        self.body = body
        self.content_length = len(body) if content_length == -1 else content_length
        self.reads: list[int] = []

    async def read(self, limit: int) -> bytes:
        self.reads.append(limit)
        return self.body


class FakePeer:
    """The peer client's surface the service uses; `error` makes every call fail with it."""

    url = "http://peer.invalid"
    name = "b"
    last_error = None

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.statuses: dict[str, dict[str, Any]] = {}
        self.error: http.HttpError | None = None
        self.pulls: list[int] = []

    def reachable(self) -> bool:
        return self.error is None

    async def pull(self, top: int) -> list[dict[str, Any]]:
        self.pulls.append(top)
        if self.error:
            raise self.error
        items, self.items = self.items[:top], self.items[top:]
        return items

    async def get_work(self, work_id: str, wait_s: float) -> dict[str, Any]:
        if self.error:
            raise self.error
        if work_id not in self.statuses:
            raise http.NotFound("no such job", status=404)
        return self.statuses[work_id]


class Fleet:
    wanted = 3

    def fleet_size(self) -> int:
        return 2

    def status(self) -> dict[str, Any]:
        return {"live": 2, "starting": 0, "max": 5, "allowed": 5}


@contextlib.asynccontextmanager
async def service_for(tmp_path, *, peer=None, fleet=None, max_workers=0, **settings) -> AsyncIterator[Service]:
    settings.setdefault("max_attempts", 2)
    config = ServerSettings(name="a", launcher="none", state_dir=tmp_path, max_body_bytes=100, **settings)
    async with opened_store(tmp_path / "jobs.db") as store:
        scheduler = Scheduler(store, lease_s=config.lease_s, max_attempts=config.max_attempts)
        yield Service(
            config,
            store=store,
            scheduler=scheduler,
            registry=Registry(),
            loans=Loans(max_workers),
            peer=peer,
            fleet=fleet,
        )


async def lease(service: Service, worker: str = "w1", max_jobs: int = 10, wait_s: float = 0.0) -> LeaseGrant:
    grants: list[LeaseGrant] = []

    async def deliver(grant: LeaseGrant) -> None:
        grants.append(grant)

    await service.lease(worker, max_jobs, wait_s, deliver)
    (grant,) = grants
    return grant


@aio
async def test_a_job_goes_enqueue_lease_complete_pull(tmp_path):
    async with service_for(tmp_path, lease_s=12.0) as service:
        work_id = await service.enqueue(5, Upload(b"payload"))
        assert (work_id.server, work_id.seq) == ("a", 1)
        grant = await lease(service)
        assert grant.lease_s == 12.0
        assert [(j.work_id, j.iterations, j.body) for j in grant.jobs] == [(work_id, 5, b"payload")]
        assert await service.complete("w1", [(str(work_id), DIGEST)], [], {"rate": 1e6}) == {
            "accepted": 1,
            "duplicates": 0,
        }
        assert await service.complete("w2", [(str(work_id), bytes(64))], [], None) == {"accepted": 0, "duplicates": 1}
        (item,) = await service.pull_completed(10)
        assert item["work_id"] == str(work_id) and item["result"] == DIGEST.hex() and item["iterations"] == 5
        assert await service.pull_completed(10) == []  # handed out once
        status = await service.work(str(work_id), 0)
        assert (status["status"], status["result"]) == ("completed", DIGEST.hex())
        assert service.registry.workers["w1"].rate == 1e6


@aio
async def test_enqueue_refuses_a_body_announced_too_large_before_reading_it(tmp_path):
    async with service_for(tmp_path) as service:
        upload = Upload(b"x" * 101)
        with pytest.raises(TooLarge) as info:
            await service.enqueue(1, upload)
        assert info.value.status == 413 and upload.reads == []
        unannounced = Upload(b"x" * 10, content_length=None)
        await service.enqueue(1, unannounced)
        assert unannounced.reads == [100]  # the read itself is bounded by the limit
        assert len(service.scheduler.queued) == 1


@aio
async def test_enqueue_answers_unavailable_when_full_or_closing(tmp_path):
    async with service_for(tmp_path, max_queued=2) as service:
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
            service.health()


@aio
async def test_lease_hands_out_at_most_the_servers_batch_maximum(tmp_path):
    async with service_for(tmp_path, lease_batch_max=2) as service:
        for body in (b"a", b"b", b"c"):
            await service.enqueue(1, Upload(body))
        assert [j.body for j in (await lease(service, max_jobs=100)).jobs] == [b"a", b"b"]
        assert (await lease(service, wait_s=0.01)).jobs[0].body == b"c"
        assert (await lease(service, wait_s=0.01)).jobs == []  # an empty long-poll is delivered too


@pytest.mark.parametrize("failure", [ConnectionResetError("worker gone"), asyncio.CancelledError()])
@aio
async def test_jobs_that_could_not_be_delivered_go_back_at_once(tmp_path, failure):
    async with service_for(tmp_path) as service:
        work_id = await service.enqueue(1, Upload(b"a"))

        async def deliver(grant: LeaseGrant) -> None:
            assert grant.jobs
            raise failure

        with pytest.raises(type(failure)):
            await service.lease("w1", 10, 0, deliver)
        assert list(service.scheduler.queued) == [work_id.seq] and not service.scheduler.leases
        await flush(service.store)
        record = service.store.get(work_id.seq)
        assert (record.state, record.attempts) == (State.QUEUED, 0)  # the attempt is refunded


@aio
async def test_complete_ignores_other_servers_and_malformed_ids(tmp_path):
    async with service_for(tmp_path) as service:
        work_id = await service.enqueue(1, Upload(b"a"))
        await lease(service)
        foreign = str(WorkId("b", work_id.seq, work_id.nonce))
        results = [(foreign, DIGEST), ("garbage", DIGEST), (f"{work_id}\n", DIGEST), (None, DIGEST)]
        failures = [(foreign, "x"), ("a.1", "y")]
        assert await service.complete("w1", results, failures, None) == {"accepted": 0, "duplicates": 0}
        assert service.scheduler.held_by("w1") == [work_id.seq]


@aio
async def test_reported_failures_retry_then_fail_with_a_bounded_error(tmp_path):
    async with service_for(tmp_path, max_attempts=2) as service:
        work_id = await service.enqueue(1, Upload(b"a"))
        await lease(service)
        await service.complete("w1", [], [(str(work_id), "first")], None)
        assert list(service.scheduler.queued) == [work_id.seq]
        await lease(service)
        await service.complete("w1", [], [(str(work_id), "x" * 5000)], None)
        record = service.store.get(work_id.seq)
        assert record.state is State.FAILED
        assert record.error == "worker error: " + "x" * MAX_ERROR_CHARS


@aio
async def test_heartbeat_and_release_shapes(tmp_path):
    async with service_for(tmp_path, lease_s=9.0) as service:
        mine = await service.enqueue(1, Upload(b"a"))
        other = await service.enqueue(1, Upload(b"b"))
        await lease(service, "w1", max_jobs=1)
        await lease(service, "w2", max_jobs=1)
        ids = [str(mine), str(other), "b.1.abcdef", "nonsense"]
        assert service.heartbeat("w1", ids, {"busy": True}) == {"lost": [str(other)], "lease_s": 9.0}
        assert service.registry.workers["w1"].busy is True
        with pytest.raises(BadRequest):
            service.heartbeat("w1", "a.1.abcdef", None)
        assert await service.release("w1", ids, None) == {"released": 1}
        assert list(service.scheduler.queued) == [mine.seq]
        with pytest.raises(BadRequest):
            await service.release("w1", {"work_ids": []}, None)


@aio
async def test_work_not_found_for_bad_unknown_and_wrong_nonce_ids(tmp_path):
    async with service_for(tmp_path) as service:
        work_id = await service.enqueue(1, Upload(b"a"))
        assert (await service.work(str(work_id), 0))["status"] == "queued"
        wrong_nonce = str(WorkId("a", work_id.seq, "zzzzzz" if work_id.nonce != "zzzzzz" else "yyyyyy"))
        for bad in ("garbage", "a.99.abcdef", wrong_nonce, f"{work_id} ", "b.1.abcdef"):
            with pytest.raises(NotFound):
                await service.work(bad, 0)  # the last: another server's id, and no peer to ask


@aio
async def test_work_long_polls_until_the_job_finishes(tmp_path):
    async with service_for(tmp_path) as service:
        work_id = await service.enqueue(1, Upload(b"a"))
        waiting = asyncio.ensure_future(service.work(str(work_id), 60.0))
        await lease(service)
        assert not waiting.done()
        await service.complete("w1", [(str(work_id), DIGEST)], [], None)
        status = await asyncio.wait_for(waiting, 5.0)
        assert status["status"] == "completed"


@aio
async def test_work_of_a_peer_job_asks_the_peer(tmp_path):
    peer = FakePeer()
    peer_status = {"work_id": "b.7.abcdef", "status": "running"}
    peer.statuses["b.7.abcdef"] = peer_status
    async with service_for(tmp_path, peer=peer) as service:
        assert await service.work("b.7.abcdef", 0) == peer_status
        with pytest.raises(NotFound):
            await service.work("b.8.abcdef", 0)
        peer.error = http.Unavailable("peer down")
        with pytest.raises(Unavailable) as info:
            await service.work("b.7.abcdef", 0)
        assert info.value.retry_after_s == 5


@aio
async def test_pull_completed_merges_the_peers_results_newest_first(tmp_path):
    peer = FakePeer()
    peer.items = [
        {"work_id": "b.1.abcdef", "result": "00" * 64, "iterations": 1, "completed_at": 3e9},
        {"work_id": "b.2.abcdef", "result": "11" * 64, "iterations": 1, "completed_at": 1.0},
    ]
    async with service_for(tmp_path, peer=peer) as service:
        own = await service.enqueue(1, Upload(b"a"))
        await lease(service)
        await service.complete("w1", [(str(own), DIGEST)], [], None)
        items = await service.pull_completed(2)
        assert [item["work_id"] for item in items] == ["b.1.abcdef", str(own)]
        assert peer.pulls == [1]  # the peer is asked only for what is left of `top`
        assert [item["work_id"] for item in await service.pull_completed(5)] == ["b.2.abcdef"]
        peer.items = [{"work_id": "b.3.abcdef", "result": "22" * 64, "iterations": 1, "completed_at": 2.0}]
        peer.error = http.Unavailable("peer down")
        assert await service.pull_completed(5) == []  # a peer that is down is skipped; its results wait
        peer.error = None
        assert [item["work_id"] for item in await service.pull_completed(5)] == ["b.3.abcdef"]
        assert await service.peer_pull(5) == []  # the peer API never asks the peer back


@aio
async def test_sync_loans_grants_what_the_fleet_does_not_need(tmp_path):
    async with service_for(tmp_path, max_workers=5) as service:
        await service.enqueue(1, Upload(b"a"))
        assert service.sync_loans(want=9, in_use=0) == {"name": "a", "granted": 5, "queued": 1}
        assert service.loans.lent == 5
    async with service_for(tmp_path, max_workers=5, fleet=Fleet()) as service:
        assert service.sync_loans(want=9, in_use=0) == {"name": "a", "granted": 2, "queued": 0}  # 5 - wanted 3


@aio
async def test_status_and_health(tmp_path):
    async with service_for(tmp_path) as service:
        work_id = await service.enqueue(1, Upload(b"a"))
        await service.enqueue(1, Upload(b"b"))
        await lease(service, max_jobs=1)
        await service.complete("w1", [(str(work_id), DIGEST)], [], None)
        assert service.health() == {"ok": True, "server": "a"}
        status = await service.status()
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
