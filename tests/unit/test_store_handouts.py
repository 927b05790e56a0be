"""server.store: pullCompleted's two phases on disk (reserve, then confirm or unreserve)."""

from __future__ import annotations

from server.jobs import Outcome, State
from server.store import CONFIRM_SQL, UNRESERVE_SQL
from tests.unit.support import aio, insert_seq, opened_store

DIGEST = bytes(range(64))


async def finished(store, count: int, *, first_at: float = 10.0) -> list[int]:
    """`count` finished jobs, completed one second apart (the third of each run failed)."""
    seqs = []
    for i in range(count):
        seq = await insert_seq(store, f"n{i:02d}aaa", 1, b"x", 1.0)
        outcome = Outcome(seq, DIGEST) if i % 3 != 2 else Outcome(seq, None, "failed")
        await store.finish([outcome], "w", first_at + i)
        seqs.append(seq)
    return seqs


@aio
async def test_reserve_hands_out_newest_first_and_never_reserves_twice(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        seqs = await finished(store, 4)
        await insert_seq(store, "openaa", 1, b"x", 1.0)  # an open job is never pulled
        first = await store.reserve(3, "h1")
        assert [r.seq for r in first] == [seqs[3], seqs[2], seqs[1]]
        assert first[1].state is State.FAILED and first[1].error == "failed"
        assert first[0].result == DIGEST
        assert [r.seq for r in await store.reserve(10, "h2")] == [seqs[0]]  # not what h1 holds
        assert await store.reserve(10, "h3") == []


@aio
async def test_confirm_marks_delivered_and_unreserve_makes_pullable_again(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        seqs = await finished(store, 4)
        await store.reserve(2, "kept")
        await store.reserve(2, "lost")
        assert await store.confirm("kept") == 2
        assert await store.confirm("kept") == 0  # idempotent: nothing is reserved under it now
        assert await store.unreserve("lost") == 2
        again = await store.reserve(10, "again")
        assert [r.seq for r in again] == [seqs[1], seqs[0]]  # the unconfirmed ones, nothing delivered
        assert await store.unreserve("again") == 2
        assert await store.unreserve("never-made") == 0 and await store.confirm("never-made") == 0
        delivered = await store.db.run(lambda c: c.execute("SELECT seq FROM jobs WHERE delivered = 1").fetchall())
        assert sorted(seq for (seq,) in delivered) == [seqs[2], seqs[3]]


@aio
async def test_a_result_finished_after_a_reservation_is_pullable_by_the_next(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        await finished(store, 1)
        await store.reserve(10, "h1")
        late = await insert_seq(store, "lateaa", 1, b"x", 1.0)
        await store.finish([Outcome(late, DIGEST)], "w", 99.0)
        assert [r.seq for r in await store.reserve(10, "h2")] == [late]


@aio
async def test_reservations_do_not_survive_a_restart(tmp_path):
    path = tmp_path / "jobs.db"
    async with opened_store(path) as store:
        seqs = await finished(store, 3)
        await store.reserve(1, "confirmed")
        await store.confirm("confirmed")
        assert len(await store.reserve(10, "in-flight")) == 2
        assert await store.reserve(10, "nothing-left") == []
    async with opened_store(path) as store:
        assert [r.seq for r in await store.reserve(10, "after")] == [seqs[1], seqs[0]]
        assert await store.confirm("in-flight") == 0  # the old id names nothing any more


@aio
async def test_expired_results_are_no_longer_pullable(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        seqs = await finished(store, 3, first_at=10.0)
        await store.reserve(1, "h")
        assert await store.expire_results(11.5) == 2
        assert await store.reserve(10, "h2") == []
        assert await store.confirm("h") == 1 and store.get(seqs[2]) is not None


@aio
async def test_confirming_or_releasing_a_hand_out_reads_its_rows_only_not_the_whole_table(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        await finished(store, 3)
        plans = [
            store.db.read(lambda c, sql=sql, args=args: c.execute(f"EXPLAIN QUERY PLAN {sql}", args).fetchall())
            for sql, args in ((CONFIRM_SQL, (1.0, "h")), (UNRESERVE_SQL, ("h",)))
        ]
        assert all("USING INDEX jobs_handout" in str(plan) for plan in plans), plans
