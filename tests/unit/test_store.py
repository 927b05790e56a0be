"""server.store: durable job storage on a real SQLite file, one writer thread, group commits."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest

from server.jobs import JobRecord, Outcome, State
from server.store import Store, StoreError
from tests.unit.support import aio, flush, opened_store

DIGEST = bytes(range(64))
OTHER_DIGEST = bytes(64)


def committed_count(store: Store) -> int:
    """Rows visible to a separate connection: what is committed, nothing in flight."""
    with sqlite3.connect(store.path) as conn:
        return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])


async def wait_in_thread(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, 5.0), "the writer thread never got there"


@aio
async def test_insert_and_get(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        first = await store.insert("abc234", 7, b"hello", 100.0)
        second = await store.insert("xyz234", 1, b"", 101.0)
        assert second > first
        assert store.get(first) == JobRecord(
            seq=first,
            nonce="abc234",
            iterations=7,
            size=5,
            state=State.QUEUED,
            attempts=0,
            worker=None,
            enqueued_at=100.0,
            completed_at=None,
            result=None,
            error=None,
        )
        assert store.get(second).size == 0
        assert store.get(second + 1000) is None


@aio
async def test_lease_returns_bodies_and_records_the_lease_later(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        a = await store.insert("aaaaaa", 1, b"body-a", 1.0)
        b = await store.insert("bbbbbb", 1, b"body-b", 1.0)
        done = await store.insert("cccccc", 1, b"body-c", 1.0)
        await store.finish([Outcome(done, DIGEST)], "w0", 2.0)
        bodies = store.lease([a, b, done, 999], "w1")
        assert bodies == {a: b"body-a", b: b"body-b"}  # finished and unknown jobs are not handed out
        await flush(store)  # the lease record is queued without waiting; a later run commits it
        for seq in (a, b):
            record = store.get(seq)
            assert (record.state, record.attempts, record.worker) == (State.RUNNING, 1, "w1")
        assert store.get(done).state is State.COMPLETED


@aio
async def test_finish_first_outcome_wins_and_drops_the_body(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        a = await store.insert("aaaaaa", 3, b"body", 1.0)
        b = await store.insert("bbbbbb", 3, b"body", 1.0)
        store.lease([a, b], "w1")
        assert await store.finish([Outcome(a, DIGEST), Outcome(b, None, "boom")], None, 5.0) == [a, b]
        assert await store.finish([Outcome(a, OTHER_DIGEST), Outcome(b, DIGEST)], "w2", 6.0) == []
        ra, rb = store.get(a), store.get(b)
        assert (ra.state, ra.result, ra.error, ra.completed_at, ra.worker) == (State.COMPLETED, DIGEST, None, 5.0, "w1")
        assert (rb.state, rb.result, rb.error) == (State.FAILED, None, "boom")
        bodies = await store.run(lambda c: c.execute("SELECT body FROM jobs").fetchall())
        assert bodies == [(None,), (None,)]


@aio
async def test_requeue_only_touches_running_jobs_and_may_refund_the_attempt(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        a, b, c = [await store.insert(n, 1, b"x", 1.0) for n in ("aaaaaa", "bbbbbb", "cccccc")]
        store.lease([a, b], "w1")
        await store.requeue([a])
        await store.requeue([b, c], refund_attempt=True)
        ra, rb, rc = store.get(a), store.get(b), store.get(c)
        assert (ra.state, ra.attempts, ra.worker) == (State.QUEUED, 1, None)
        assert (rb.state, rb.attempts, rb.worker) == (State.QUEUED, 0, None)
        assert (rc.state, rc.attempts) == (State.QUEUED, 0)  # queued, not running: untouched
        await store.finish([Outcome(a, DIGEST)], "w1", 2.0)
        await store.requeue([a], refund_attempt=True)
        assert store.get(a).state is State.COMPLETED  # finished jobs never go back


@aio
async def test_pull_hands_each_result_out_once_newest_first(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        seqs = [await store.insert(f"n{i}aaaa", 1, b"x", 1.0) for i in range(5)]
        for i, seq in enumerate(seqs[:4]):
            outcome = Outcome(seq, DIGEST) if i != 2 else Outcome(seq, None, "failed")
            await store.finish([outcome], "w", 10.0 + i)
        first = await store.pull(3)
        assert [r.seq for r in first] == [seqs[3], seqs[2], seqs[1]]
        assert first[1].state is State.FAILED and first[1].error == "failed"
        assert [r.seq for r in await store.pull(10)] == [seqs[0]]
        assert await store.pull(10) == []  # the open job is never pulled, nothing twice


@aio
async def test_open_jobs_counts_and_expire_results(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        q = await store.insert("qqqqqq", 1, b"x", 0.0)
        r = await store.insert("rrrrrr", 1, b"x", 0.0)
        old = await store.insert("oooooo", 1, b"x", 0.0)
        new = await store.insert("nnnnnn", 1, b"x", 0.0)
        failed = await store.insert("ffffff", 1, b"x", 0.0)
        store.lease([r], "w")
        await store.finish([Outcome(old, DIGEST)], "w", 10.0)
        await store.finish([Outcome(new, DIGEST)], "w", 100.0)
        await store.finish([Outcome(failed, None, "bad")], "w", 100.0)
        opened = await store.open_jobs()
        assert [(j.seq, j.state) for j in opened] == [(q, State.QUEUED), (r, State.RUNNING)]
        assert await store.counts() == {State.COMPLETED: 2, State.FAILED: 1}
        assert await store.expire_results(50.0) == 1
        assert store.get(old) is None
        assert store.get(q) is not None  # open jobs never expire, however old
        assert await store.counts() == {State.COMPLETED: 1, State.FAILED: 1}


@aio
async def test_data_survives_a_reopen(tmp_path):
    path = tmp_path / "jobs.db"
    async with opened_store(path, synchronous="FULL") as store:
        seq = await store.insert("abc234", 9, b"kept", 1.0)
    async with opened_store(path) as store:
        assert store.get(seq).nonce == "abc234"
        assert [j.seq for j in await store.open_jobs()] == [seq]


@aio
async def test_check_identity_refuses_another_servers_state_dir(tmp_path):
    path = tmp_path / "jobs.db"
    async with opened_store(path) as store:
        await store.check_identity("alpha")
        await store.check_identity("alpha")
        with pytest.raises(StoreError, match="'alpha', not 'beta'"):
            await store.check_identity("beta")
    async with opened_store(path) as store:
        with pytest.raises(StoreError, match="belongs to server 'alpha'"):
            await store.check_identity("beta")
        await store.check_identity("alpha")


@aio
async def test_group_commit_acknowledges_only_after_the_whole_batch_committed(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        gate1, gate2, in_gate2 = threading.Event(), threading.Event(), threading.Event()
        in_gate1 = threading.Event()

        def block_first(conn: sqlite3.Connection) -> None:
            in_gate1.set()
            assert gate1.wait(5.0)

        def block_last(conn: sqlite3.Connection) -> None:
            in_gate2.set()
            assert gate2.wait(5.0)

        first = asyncio.ensure_future(store.run(block_first))
        await wait_in_thread(in_gate1)  # the writer is busy: what follows queues up
        inserts = [asyncio.ensure_future(store.insert(f"n{i:05d}", 1, b"x", 1.0)) for i in range(200)]
        last = asyncio.ensure_future(store.run(block_last))
        await asyncio.sleep(0)  # let every task queue its operation
        gate1.set()
        await first
        await wait_in_thread(in_gate2)  # the 200 inserts ran in this batch, before the last op
        assert committed_count(store) == 0  # ... inside one open transaction
        assert not any(task.done() for task in inserts)  # and nobody was told yet
        gate2.set()
        seqs = await asyncio.gather(*inserts)
        await last
        assert sorted(seqs) == list(range(1, 201))
        assert committed_count(store) == 200


@aio
async def test_an_operation_that_raises_rolls_back_only_itself(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        gate, in_gate = threading.Event(), threading.Event()

        def block(conn: sqlite3.Connection) -> None:
            in_gate.set()
            assert gate.wait(5.0)

        def insert_then_fail(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO jobs (nonce, iterations, size, state, enqueued_at) VALUES ('zzzzzz', 1, 0, 0, 0)")
            raise ValueError("bad operation")

        def bad_sql(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO no_such_table VALUES (1)")

        blocker = asyncio.ensure_future(store.run(block))
        await wait_in_thread(in_gate)
        before = asyncio.ensure_future(store.insert("aaaaaa", 1, b"x", 1.0))
        failing = asyncio.ensure_future(store.run(insert_then_fail))
        broken = asyncio.ensure_future(store.run(bad_sql))
        after = asyncio.ensure_future(store.insert("bbbbbb", 1, b"x", 1.0))
        await asyncio.sleep(0)
        gate.set()
        await blocker
        a, b = await asyncio.gather(before, after)
        with pytest.raises(StoreError, match="ValueError: bad operation"):
            await failing
        with pytest.raises(StoreError, match="no such table"):
            await broken
        assert [j.nonce for j in await store.open_jobs()] == ["aaaaaa", "bbbbbb"]
        assert store.get(a).nonce == "aaaaaa" and store.get(b).nonce == "bbbbbb"


@aio
async def test_a_closed_store_raises_store_error(tmp_path):
    store = Store(tmp_path / "jobs.db")
    with pytest.raises(StoreError, match="closed"):
        await store.insert("aaaaaa", 1, b"x", 1.0)  # never started
    await store.start()
    seq = await store.insert("aaaaaa", 1, b"x", 1.0)
    await store.close()
    await store.close()  # twice is fine
    with pytest.raises(StoreError):
        await store.insert("bbbbbb", 1, b"x", 1.0)
    with pytest.raises(StoreError):
        store.get(seq)
    with pytest.raises(StoreError):
        store.lease([seq], "w")
    with pytest.raises(StoreError):
        await store.pull(1)
