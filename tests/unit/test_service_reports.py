"""server.service: reports name leases (the 409 matrix, late results), and admission bounds
(max_queued under concurrent uploads, the cap on client long-polls)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from common.ids import WorkId
from server.errors import Conflict, TooLarge, Unavailable
from server.jobs import State
from server.service import Entry
from tests.unit.service_support import DIGEST, Upload, held, lease_one, result
from tests.unit.support import aio, flush, opened_node

OTHER = bytes(range(1, 65))


def lost_entry(job) -> dict[str, str]:
    """How a heartbeat answer names a lease the worker no longer holds."""
    return {"work_id": str(job.work_id), "lease_id": job.lease_id}


@contextlib.asynccontextmanager
async def two_leased(tmp_path, **settings):
    """A node with two jobs leased: `mine` by w1 and `theirs` by w2."""
    async with opened_node(tmp_path, **settings) as node:
        await node.service.enqueue(1, Upload(b"mine"))
        await node.service.enqueue(1, Upload(b"theirs"))
        mine = await lease_one(node.service, "w1")
        theirs = await lease_one(node.service, "w2")
        yield node, mine, theirs


KINDS = ("other worker's lease", "made-up lease id", "wrong nonce", "other server's id", "own lease, other job")


def bad_entry(kind: str, mine, theirs) -> tuple[Entry, str]:
    """An entry of w1's naming no lease of w1's for that job, and the reason the service gives."""
    wrong_nonce = WorkId("a", mine.work_id.seq, "zzzzzz" if mine.work_id.nonce != "zzzzzz" else "yyyyyy")
    return {
        KINDS[0]: (Entry(str(theirs.work_id), theirs.lease_id, DIGEST), "lease issued to another worker"),
        KINDS[1]: (Entry(str(mine.work_id), "made-up-lease-id-0000", DIGEST), "no such lease for this job"),
        KINDS[2]: (Entry(str(wrong_nonce), mine.lease_id, DIGEST), "unknown job"),
        KINDS[3]: (
            Entry(str(WorkId("b", mine.work_id.seq, mine.work_id.nonce)), mine.lease_id, DIGEST),
            "not a work id of server a",
        ),
        KINDS[4]: (Entry(str(theirs.work_id), mine.lease_id, DIGEST), "no such lease for this job"),
    }[kind]


async def snapshot(node):
    """Everything a report could change: rows, leases (with their terms), queue, registry."""
    await flush(node.store)
    rows = await node.store.db.run(lambda c: c.execute("SELECT * FROM jobs ORDER BY seq").fetchall())
    leases = {seq: (lease.lease_id, lease.worker, lease.expires) for seq, lease in node.scheduler.leases.items()}
    seen = {w.worker_id: (w.last_seen, w.busy) for w in node.registry.workers.values()}
    return rows, leases, sorted(node.scheduler.queued), seen


async def report(node, call: str, entries: list[Entry]) -> object:
    """w1 reports `entries` by one of its calls (a failure report gives each an error text)."""
    service = node.service
    if call == "complete":
        return await service.complete("w1", entries, [], {"busy": True})
    if call == "failure":
        return await service.complete("w1", [], [Entry(e.work_id, e.lease_id, "error") for e in entries], None)
    if call == "heartbeat":
        return service.heartbeat("w1", entries, {"busy": True})
    return await service.release("w1", entries, None)


@pytest.mark.parametrize("call", ["complete", "failure", "heartbeat", "release"])
@pytest.mark.parametrize("kind", KINDS)
@aio
async def test_a_report_naming_no_lease_of_the_worker_is_refused_whole(tmp_path, call, kind):
    async with two_leased(tmp_path) as (node, mine, theirs):
        bad, why = bad_entry(kind, mine, theirs)
        node.clock.advance(5)  # so that an extended lease or a sign of life would show
        before = await snapshot(node)
        with pytest.raises(Conflict) as info:
            await report(node, call, [result(mine), bad])
        assert info.value.status == 409
        assert info.value.details == {"rejected": [{"work_id": bad.work_id, "reason": why}]}
        assert await snapshot(node) == before  # the good entry beside it did nothing either
        await report(node, call, [result(mine)])  # ... though alone it does something
        assert await snapshot(node) != before


@aio
async def test_every_bad_entry_is_listed(tmp_path):
    async with two_leased(tmp_path) as (node, mine, theirs):
        bad = [bad_entry(kind, mine, theirs)[0] for kind in KINDS]
        with pytest.raises(Conflict) as info:
            await node.service.complete("w1", [result(mine), *bad], [], None)
        rejected = info.value.details["rejected"]
        assert [r["work_id"] for r in rejected] == [e.work_id for e in bad]
        assert "5 of 6 entries" in info.value.message


@aio
async def test_a_late_result_from_an_earlier_holder_is_accepted_while_unfinished(tmp_path):
    async with opened_node(tmp_path, lease_s=10.0, max_attempts=5) as node:
        service = node.service
        await service.enqueue(1, Upload(b"a"))
        old = await lease_one(service, "w1")
        node.clock.advance(11)
        assert await node.scheduler.expire() == (1, 0)
        new = await lease_one(service, "w2")
        assert service.heartbeat("w1", [held(old)], None)["lost"] == [lost_entry(old)]
        assert await service.complete("w1", [result(old)], [], None) == {"accepted": 1, "duplicates": 0}
        assert await service.complete("w2", [result(new, OTHER)], [], None) == {"accepted": 0, "duplicates": 1}
        record = node.store.get(old.work_id.seq)
        assert (record.state, record.result, record.worker) == (State.COMPLETED, DIGEST, "w1")
        assert service.heartbeat("w2", [held(new)], None)["lost"] == [lost_entry(new)]  # finished: lost
        # still w1's lease, still recognised after the finish (from the store): a duplicate, not a 409
        assert await service.complete("w1", [result(old)], [], None) == {"accepted": 0, "duplicates": 1}


@aio
async def test_a_late_failure_or_release_from_an_earlier_holder_is_ignored(tmp_path):
    async with opened_node(tmp_path, lease_s=10.0, max_attempts=2) as node:
        service = node.service
        await service.enqueue(1, Upload(b"a"))
        old = await lease_one(service, "w1")
        node.clock.advance(11)
        await node.scheduler.expire()
        new = await lease_one(service, "w2")  # the last attempt
        assert await service.complete("w1", [], [Entry(str(old.work_id), old.lease_id, "oom")], None) == {
            "accepted": 0,
            "duplicates": 0,
        }
        assert await service.release("w1", [held(old)], None) == {"released": 0}
        await flush(node.store)
        record = node.store.get(new.work_id.seq)
        assert (record.state, record.worker, record.attempts, record.lease_id) == (State.RUNNING, "w2", 2, new.lease_id)
        assert node.scheduler.current(new.work_id.seq).lease_id == new.lease_id


@aio
async def test_heartbeat_extends_only_current_leases_and_reports_earlier_ones_lost(tmp_path):
    async with opened_node(tmp_path, lease_s=10.0, max_attempts=5) as node:
        service = node.service
        await service.enqueue(1, Upload(b"a"))
        await service.enqueue(1, Upload(b"b"))
        old = await lease_one(service, "w1")
        node.clock.advance(11)
        await node.scheduler.expire()
        again = await lease_one(service, "w1")  # a again, under a new lease of the same worker
        other = await lease_one(service, "w1")  # b
        assert again.work_id == old.work_id and again.lease_id != old.lease_id
        node.clock.advance(8)
        answer = service.heartbeat("w1", [held(old), held(other)], {"busy": True})
        assert answer == {"lost": [lost_entry(old)], "lease_s": 10.0}
        assert node.registry.workers["w1"].busy is True
        node.clock.advance(8)  # `other` was extended; `again` was not named and runs out
        assert await node.scheduler.expire() == (1, 0)
        assert node.scheduler.held_by("w1") == [other.work_id.seq]


@aio
async def test_release_takes_back_only_current_leases(tmp_path):
    async with opened_node(tmp_path, lease_s=10.0) as node:
        service = node.service
        await service.enqueue(1, Upload(b"a"))
        old = await lease_one(service, "w1")
        node.clock.advance(11)
        await node.scheduler.expire()
        new = await lease_one(service, "w1")
        assert await service.release("w1", [held(old)], None) == {"released": 0}
        assert node.scheduler.held_by("w1") == [new.work_id.seq]
        assert await service.release("w1", [held(new), held(old)], None) == {"released": 1}
        assert list(node.scheduler.queued) == [new.work_id.seq] and not node.scheduler.leases


@aio
async def test_max_queued_is_exact_with_concurrent_uploads(tmp_path):
    async with opened_node(tmp_path, max_queued=3) as node:
        service = node.service
        await service.enqueue(1, Upload(b"queued"))
        gate = asyncio.Event()
        slow = [Upload(b"slow-%d" % i, gate=gate) for i in range(2)]
        tasks = [asyncio.ensure_future(service.enqueue(1, upload)) for upload in slow]
        for upload in slow:
            await asyncio.wait_for(upload.reading.wait(), 5.0)  # both admitted, bodies still arriving
        late = Upload(b"late")
        with pytest.raises(Unavailable):
            await service.enqueue(1, late)  # 1 queued + 2 arriving: full, though only one is queued
        assert late.reads == [] and len(node.scheduler.queued) == 1
        gate.set()
        await asyncio.gather(*tasks)
        assert len(node.scheduler.queued) == 3 and service.uploading == 0
        await lease_one(service)
        broken = Upload(b"x" * 10, content_length=None, error=TooLarge("body exceeds the limit"))
        with pytest.raises(TooLarge):
            await service.enqueue(1, broken)
        assert service.uploading == 0  # a failed upload gives its place back
        await service.enqueue(1, Upload(b"fits"))
        assert len(node.scheduler.queued) == 3


@aio
async def test_client_long_polls_are_capped(tmp_path):
    async with opened_node(tmp_path, max_client_waits=2) as node:
        service = node.service
        work_id = str((await service.enqueue(1, Upload(b"a"))).work_id)
        waiters = [asyncio.ensure_future(service.work(work_id, 60.0)) for _ in range(2)]
        await asyncio.sleep(0)
        assert service.waiting == 2
        with pytest.raises(Unavailable) as info:
            await service.work(work_id, 60.0)
        assert (info.value.status, info.value.retry_after_s) == (503, 1)
        assert (await service.work(work_id, 0))["status"] == "queued"  # a plain look-up is not capped
        job = await lease_one(service)
        await service.complete("w1", [result(job)], [], None)
        assert [w["status"] for w in await asyncio.gather(*waiters)] == ["completed", "completed"]
        assert service.waiting == 0
        assert (await service.work(work_id, 60.0))["status"] == "completed"
