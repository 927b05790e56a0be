"""server.scheduler over a real Store: FIFO leases, expiry on an injected clock, long-polls."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from common.cost import job_cost
from server import scheduler as scheduler_module
from server.jobs import State
from server.scheduler import Lease, Scheduler
from server.store import StoreError
from tests.unit.support import FakeClock, aio, flush, opened_store

DIGEST = bytes(range(64))


def make(store, clock=None, *, lease_s=10.0, max_attempts=2) -> Scheduler:
    return Scheduler(store, lease_s=lease_s, max_attempts=max_attempts, clock=clock or FakeClock())


async def lease_one(sched: Scheduler, worker: str) -> Lease:
    ((lease, _),) = await sched.lease(worker, 1, 0)
    return lease


@aio
async def test_leases_hand_out_the_oldest_jobs_first_with_their_bodies(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        sched = make(store)
        jobs = [await sched.enqueue(f"body{i}".encode(), i + 1) for i in range(3)]
        assert sched.backlog_cost == sum(job_cost(j.iterations, j.size) for j in jobs)
        first = await sched.lease("w1", 2, 0)
        assert [(lease.job.seq, body) for lease, body in first] == [(jobs[0].seq, b"body0"), (jobs[1].seq, b"body1")]
        assert [lease.job.attempts for lease, _ in first] == [1, 1]
        assert {lease.worker for lease, _ in first} == {"w1"}
        second = await sched.lease("w2", 5, 0)
        assert [lease.job.seq for lease, _ in second] == [jobs[2].seq]
        assert sched.held_by("w1") == [jobs[0].seq, jobs[1].seq]
        assert sched.backlog_cost == 0 and not sched.queued


@aio
async def test_lease_long_poll_wakes_on_enqueue_and_times_out_empty(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        sched = make(store)
        assert await sched.lease("w", 1, 0) == []
        assert await sched.lease("w", 1, 0.05) == []
        waiting = asyncio.ensure_future(sched.lease("w", 1, 60.0))
        await asyncio.sleep(0)
        assert not waiting.done()
        job = await sched.enqueue(b"late", 1)
        handed = await asyncio.wait_for(waiting, 5.0)  # long before the 60 s wait runs out
        assert [(lease.job.seq, body) for lease, body in handed] == [(job.seq, b"late")]


@aio
async def test_lease_bytes_max_cuts_a_lease_but_hands_out_at_least_one_job(tmp_path, monkeypatch):
    monkeypatch.setattr(scheduler_module, "LEASE_BYTES_MAX", 100)
    async with opened_store(tmp_path / "jobs.db") as store:
        sched = make(store)
        for size in (40, 40, 40, 500, 10):
            await sched.enqueue(b"x" * size, 1)
        assert [lease.job.size for lease, _ in await sched.lease("w", 10, 0)] == [40, 40]
        assert [lease.job.size for lease, _ in await sched.lease("w", 10, 0)] == [40]
        assert [lease.job.size for lease, _ in await sched.lease("w", 10, 0)] == [500]  # alone above the limit
        assert [lease.job.size for lease, _ in await sched.lease("w", 10, 0)] == [10]


@aio
async def test_a_lease_reads_bodies_from_rows_and_segments_off_the_loop_only_when_all_are_in_segments(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(scheduler_module, "READ_ON_LOOP_BYTES", 20 << 10)
    async with opened_store(tmp_path / "jobs.db") as store:
        sched = make(store)
        bodies = [os.urandom(16 << 10), os.urandom(16 << 10), b"small", os.urandom(24 << 10)]
        jobs = [await sched.enqueue(body, 1) for body in bodies]
        assert [job.where is None for job in jobs] == [False, False, True, False]  # the small one is in its row
        on_loop: list[bool] = []
        real_read = store.read_bodies

        def read_bodies(wanted):  # the real read, noting where it ran
            on_loop.append(threading.current_thread() is threading.main_thread())
            return real_read(wanted)

        monkeypatch.setattr(store, "read_bodies", read_bodies)
        first = await sched.lease("w", 2, 0)  # 32 KiB, all in segments: read in a thread
        second = await sched.lease("w", 2, 0)  # 24 KiB, one in a row: a row is read on the loop only
        assert [body for _, body in first + second] == bodies
        assert on_loop == [False, True]


@aio
async def test_after_a_restart_a_lease_reads_bodies_where_they_were_stored(tmp_path):
    path = tmp_path / "jobs.db"
    bodies = [os.urandom(16 << 10), b"small"]
    async with opened_store(path) as store:
        for body in bodies:
            await make(store).enqueue(body, 1)
    async with opened_store(path) as store:
        sched = make(store)
        await sched.load()
        assert [body for _, body in await sched.lease("w", 2, 0)] == bodies


@aio
async def test_extend_gives_a_fresh_term_and_the_others_expire(tmp_path):
    # Was "heartbeat extends leases and reports lost ones": which leases a heartbeat names and
    # which it reports lost is now decided by the service (test_service_reports.py); the
    # scheduler only extends the leases it is given.
    async with opened_store(tmp_path / "jobs.db") as store:
        clock = FakeClock()
        sched = make(store, clock)
        a = await sched.enqueue(b"a", 1)
        b = await sched.enqueue(b"b", 1)
        mine = await lease_one(sched, "w1")
        await lease_one(sched, "w2")
        clock.advance(8)
        sched.extend([mine])
        assert mine.expires == clock.mono() + 10
        clock.advance(8)  # w1's lease was extended to now + 10; w2's ran out
        assert await sched.expire() == (1, 0)
        assert sched.held_by("w1") == [a.seq]
        assert list(sched.queued) == [b.seq]


@aio
async def test_release_requeues_only_current_leases_without_counting_the_attempt(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        clock = FakeClock()
        sched = make(store, clock, max_attempts=5)
        job = await sched.enqueue(b"a", 1)
        stale = await lease_one(sched, "w1")
        clock.advance(11)
        await sched.expire()
        current = await lease_one(sched, "w2")
        assert await sched.release([stale]) == 0  # no longer the holder's to give back
        assert sched.current(job.seq) is current
        assert await sched.release([current]) == 1
        assert sched.queued[job.seq].attempts == 1 and not sched.leases  # the expired attempt still counts
        record = store.get(job.seq)
        assert (record.state, record.attempts, record.worker, record.lease_id) == (State.QUEUED, 1, None, None)
        again = await lease_one(sched, "w3")
        assert again.job.seq == job.seq and again.job.attempts == 2


@aio
async def test_expired_leases_are_requeued_then_failed_after_max_attempts(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        clock = FakeClock()
        sched = make(store, clock, max_attempts=2)
        job = await sched.enqueue(b"a", 1)
        await sched.lease("w1", 1, 0)
        clock.advance(9.9)
        assert await sched.expire() == (0, 0)
        clock.advance(0.2)
        assert await sched.expire() == (1, 0)
        assert store.get(job.seq).state is State.QUEUED
        await sched.lease("w2", 1, 0)
        clock.advance(11)
        waiter = asyncio.ensure_future(sched.wait_finished(job.seq, 60.0))
        await asyncio.sleep(0)
        assert await sched.expire() == (0, 1)
        await asyncio.wait_for(waiter, 5.0)
        record = store.get(job.seq)
        assert record.state is State.FAILED and record.attempts == 2
        assert "gave up after 2 attempts" in record.error
        assert not sched.leases and not sched.queued and sched.backlog_cost == 0


@aio
async def test_expire_of_a_silent_worker_takes_all_its_leases_at_once(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        sched = make(store)
        for body in (b"a", b"b", b"c"):
            await sched.enqueue(body, 1)
        await sched.lease("w1", 2, 0)
        await sched.lease("w2", 1, 0)
        assert await sched.expire(worker="w1") == (2, 0)  # not expired by time, but w1 is gone
        assert len(sched.queued) == 2 and len(sched.held_by("w2")) == 1


@aio
async def test_complete_first_result_wins(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        clock = FakeClock(wall=50.0)
        sched = make(store, clock)
        job = await sched.enqueue(b"a", 1)
        lease = await lease_one(sched, "w1")
        assert await sched.complete("w1", [(job.seq, DIGEST, lease.lease_id)]) == 1
        assert await sched.complete("w2", [(job.seq, bytes(64), lease.lease_id)]) == 0
        record = store.get(job.seq)
        assert (record.state, record.result, record.worker, record.completed_at) == (State.COMPLETED, DIGEST, "w1", 50)
        assert not sched.leases
        assert sched.jobs_per_s(window_s=10.0) == pytest.approx(0.1)


@aio
async def test_a_late_result_for_a_requeued_job_still_counts(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        clock = FakeClock()
        sched = make(store, clock, max_attempts=5)
        job = await sched.enqueue(b"a", 1)
        lease = await lease_one(sched, "w1")
        clock.advance(11)
        assert await sched.expire() == (1, 0)
        assert await sched.complete("w1", [(job.seq, DIGEST, lease.lease_id)]) == 1
        assert not sched.queued and sched.backlog_cost == 0
        assert await sched.lease("w2", 1, 0) == []


@aio
async def test_fail_attempt_retries_then_fails(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        sched = make(store, max_attempts=2)
        job = await sched.enqueue(b"a", 1)
        first = await lease_one(sched, "w1")
        assert await sched.fail_attempt([(first, "out of memory")]) == 0
        assert job.seq in sched.queued and store.get(job.seq).state is State.QUEUED
        second = await lease_one(sched, "w1")
        assert await sched.fail_attempt([(second, "out of memory")]) == 1
        record = store.get(job.seq)
        assert record.state is State.FAILED and record.error == "worker error: out of memory"


@aio
async def test_fail_attempt_from_a_worker_that_lost_the_lease_changes_nothing(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        clock = FakeClock()
        sched = make(store, clock, max_attempts=2)
        job = await sched.enqueue(b"a", 1)
        stale = await lease_one(sched, "w1")
        clock.advance(11)
        await sched.expire()
        await sched.lease("w2", 1, 0)  # second and last attempt, held by w2
        assert await sched.fail_attempt([(stale, "stale")]) == 0
        await flush(store)  # the lease record is written without waiting
        assert store.get(job.seq).state is State.RUNNING
        assert sched.held_by("w2") == [job.seq]


@aio
async def test_wait_finished_wakes_on_finish_and_returns_on_timeout(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        sched = make(store)
        job = await sched.enqueue(b"a", 1)
        await sched.wait_finished(job.seq, 0.02)  # times out quietly
        await sched.wait_finished(12345, 60.0)  # unknown: returns at once
        waiter = asyncio.ensure_future(sched.wait_finished(job.seq, 60.0))
        await asyncio.sleep(0)
        assert not waiter.done()
        lease = await lease_one(sched, "w")
        await sched.complete("w", [(job.seq, DIGEST, lease.lease_id)])
        await asyncio.wait_for(waiter, 5.0)
        assert not sched._done_waiters  # no waiter left behind


@aio
async def test_load_after_a_restart_rebuilds_queued_and_running(tmp_path):
    path = tmp_path / "jobs.db"
    async with opened_store(path) as store:
        sched = make(store)
        jobs = [await sched.enqueue(f"b{i}".encode(), 1) for i in range(4)]
        done, running = [lease for lease, _ in await sched.lease("w1", 2, 0)]
        await sched.complete("w1", [(jobs[0].seq, DIGEST, done.lease_id)])
        await flush(store)
    async with opened_store(path) as store:
        clock = FakeClock(mono=5000.0)
        sched = make(store, clock)
        await sched.load()
        assert list(sched.queued) == [jobs[2].seq, jobs[3].seq]
        assert list(sched.leases) == [jobs[1].seq]
        lease = sched.current(jobs[1].seq)
        assert lease.expires == 5010.0 and lease.job.attempts == 1
        # the same capability as before the restart: its worker can still report it
        assert (lease.lease_id, lease.worker) == (running.lease_id, "w1")
        assert sched.grant(running.lease_id) == (jobs[1].seq, "w1")
        assert running.lease_id in sched.grants and done.lease_id not in sched.grants  # only unfinished jobs'
        assert sched.backlog_cost == sum(j.cost for j in sched.queued.values())
        assert [lease.job.seq for lease, _ in await sched.lease("w2", 5, 0)] == [jobs[2].seq, jobs[3].seq]
        # the pre-restart job finishes
        assert await sched.complete("w1", [(jobs[1].seq, DIGEST, running.lease_id)]) == 1


@aio
async def test_close_releases_long_polls_and_stops_handing_out_work(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        sched = make(store)
        job = await sched.enqueue(b"a", 1)
        await sched.lease("w", 1, 0)
        leaser = asyncio.ensure_future(sched.lease("w2", 1, 60.0))
        waiter = asyncio.ensure_future(sched.wait_finished(job.seq, 60.0))
        await asyncio.sleep(0)
        sched.close()
        assert await asyncio.wait_for(leaser, 5.0) == []
        await asyncio.wait_for(waiter, 5.0)
        await sched.enqueue(b"b", 1)
        assert await sched.lease("w3", 1, 0) == []


@aio
async def test_a_store_failure_during_a_lease_puts_the_jobs_back(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        sched = make(store)
        job = await sched.enqueue(b"a", 1)
        await store.close()  # a real failure: the store refuses every operation now
        with pytest.raises(StoreError):
            await sched.lease("w", 1, 0)
        assert list(sched.queued) == [job.seq] and sched.queued[job.seq].attempts == 0
        assert not sched.leases


@aio
async def test_a_store_failure_during_a_lease_of_segment_bodies_puts_the_jobs_back(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        sched = make(store)
        job = await sched.enqueue(os.urandom(16 << 10), 1)
        await store.close()
        with pytest.raises(StoreError):
            await sched.lease("w", 1, 0)
        assert list(sched.queued) == [job.seq] and sched.queued[job.seq].attempts == 0
        assert not sched.leases


@aio
async def test_oldest_wait_follows_the_monotonic_clock(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        clock = FakeClock(mono=100.0)
        sched = make(store, clock)
        assert sched.oldest_wait_s() == 0.0
        await sched.enqueue(b"a", 1)
        clock.advance(3.5)
        await sched.enqueue(b"b", 1)
        assert sched.oldest_wait_s() == 3.5
        await sched.lease("w", 1, 0)
        assert sched.oldest_wait_s() == 0.0  # the younger job was enqueued just now
