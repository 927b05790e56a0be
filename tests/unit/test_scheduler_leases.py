"""server.scheduler: leases as capabilities (ids, grants, restarts) and time on the monotonic clock."""

from __future__ import annotations

import re

from server.scheduler import Scheduler
from server.store import Grant
from tests.unit.support import FakeClock, aio, flush, opened_store

DIGEST = bytes(range(64))
URLSAFE = re.compile(r"[A-Za-z0-9_-]+")
HOUR = 3600.0


def make(store, clock=None, *, lease_s=10.0, max_attempts=5) -> Scheduler:
    return Scheduler(store, lease_s=lease_s, max_attempts=max_attempts, clock=clock or FakeClock())


@aio
async def test_lease_ids_are_unique_and_unguessable_looking(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        clock = FakeClock()
        sched = make(store, clock)
        for i in range(60):
            await sched.enqueue(b"x%d" % i, 1)
        ids = [lease.lease_id for lease, _ in await sched.lease("w1", 30, 0)]
        ids += [lease.lease_id for lease, _ in await sched.lease("w2", 30, 0)]
        clock.advance(11)
        await sched.expire()  # the same jobs handed out again get new ids
        ids += [lease.lease_id for lease, _ in await sched.lease("w1", 60, 0)]
        assert len(ids) == 120 and len(set(ids)) == 120
        assert all(len(i) >= 16 and URLSAFE.fullmatch(i) for i in ids)
        assert len({i[:4] for i in ids}) > 100  # random, not a counter or a worker/seq prefix


@aio
async def test_grants_are_remembered_for_unfinished_jobs_and_dropped_on_finish(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        clock = FakeClock()
        sched = make(store, clock)
        job = await sched.enqueue(b"a", 1)
        other = await sched.enqueue(b"b", 1)
        ((first, _),) = await sched.lease("w1", 1, 0)
        clock.advance(11)
        await sched.expire()
        ((second, _), (third, _)) = await sched.lease("w2", 2, 0)
        assert (second.job.seq, third.job.seq) == (job.seq, other.seq)
        # both leases ever issued for the unfinished job are known, each with its holder
        assert sched.grants[first.lease_id] == Grant((job.seq, "w1"))
        assert sched.grant(second.lease_id) == Grant((job.seq, "w2"))
        assert sched.grant("made-up-lease-id") is None
        assert sched.current(job.seq) is second
        assert await sched.complete("w2", [(job.seq, DIGEST, second.lease_id)]) == 1
        assert set(sched.grants) == {third.lease_id}  # the finished job's are dropped from memory
        assert sched.current(job.seq) is None and sched.nonce(job.seq) is None
        await flush(store)
        # ... the store still answers for them while the result is kept (late reports are recognised)
        assert sched.grant(first.lease_id) == Grant((job.seq, "w1"))
        await store.expire_results(clock.wall() + 1)
        assert sched.grant(first.lease_id) is None and sched.grant(third.lease_id) is not None


@aio
async def test_a_released_or_undelivered_lease_keeps_no_current_lease(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        sched = make(store)
        job = await sched.enqueue(b"a", 1)
        ((lease, _),) = await sched.lease("w1", 1, 0)
        sched.release_now([lease])  # never reached the worker: nothing was recorded against it
        assert sched.current(job.seq) is None and sched.queued[job.seq].attempts == 0
        assert sched.nonce(job.seq) == job.nonce


@aio
async def test_a_wall_clock_step_expires_nothing_and_ages_nothing(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        clock = FakeClock()
        sched = make(store, clock, lease_s=10.0)
        await sched.enqueue(b"a", 1)
        await sched.enqueue(b"b", 1)
        await sched.lease("w1", 1, 0)
        clock.advance(2.0)
        assert sched.oldest_wait_s() == 2.0
        for step in (+HOUR, -HOUR, -HOUR, +HOUR):
            clock.step_wall(step)
            assert await sched.expire() == (0, 0)
            assert sched.oldest_wait_s() == 2.0
            assert len(sched.leases) == 1
        clock.advance(7.9)
        assert await sched.expire() == (0, 0)
        clock.advance(0.2)  # the monotonic clock passes lease_s: now it expires
        assert await sched.expire() == (1, 0)
        assert not sched.leases and len(sched.queued) == 2


@aio
async def test_a_wall_clock_step_does_not_move_the_finish_rate(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        clock = FakeClock()
        sched = make(store, clock)
        job = await sched.enqueue(b"a", 1)
        ((lease, _),) = await sched.lease("w1", 1, 0)
        await sched.complete("w1", [(job.seq, DIGEST, lease.lease_id)])
        clock.step_wall(HOUR)
        assert sched.jobs_per_s(window_s=10.0) == 0.1
        clock.advance(10.5)
        assert sched.jobs_per_s(window_s=10.0) == 0.0


@aio
async def test_load_keeps_each_running_jobs_lease_and_its_earlier_grants(tmp_path):
    path = tmp_path / "jobs.db"
    async with opened_store(path) as store:
        clock = FakeClock()
        sched = make(store, clock)
        job = await sched.enqueue(b"a", 1)
        ((old, _),) = await sched.lease("w1", 1, 0)
        clock.advance(11)
        await sched.expire()
        ((new, _),) = await sched.lease("w2", 1, 0)
        await flush(store)
    async with opened_store(path) as store:
        sched = make(store, FakeClock(mono=1.0))
        await sched.load()
        lease = sched.current(job.seq)
        assert (lease.lease_id, lease.worker, lease.job.nonce, lease.expires) == (new.lease_id, "w2", job.nonce, 11.0)
        assert sched.grants == {old.lease_id: (job.seq, "w1"), new.lease_id: (job.seq, "w2")}
        assert sched.nonce(job.seq) == job.nonce
        # w1's late result is still recognised after the restart, and finishes the job
        assert sched.grant(old.lease_id).worker == "w1"
        assert await sched.complete("w1", [(job.seq, DIGEST, old.lease_id)]) == 1
        assert not sched.grants and not sched.leases
