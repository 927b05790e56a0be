"""server.store: durable job storage on a real SQLite file (the writer thread: test_db.py)."""

from __future__ import annotations

import sqlite3

import pytest

from server.jobs import JobRecord, Outcome, State
from server.store import Grant, Store, StoreError
from tests.unit.support import aio, flush, insert_seq, opened_store

DIGEST = bytes(range(64))
OTHER_DIGEST = bytes(64)


@aio
async def test_insert_and_get(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        first = await insert_seq(store, "abc234", 7, b"hello", 100.0)
        second = await insert_seq(store, "xyz234", 1, b"", 101.0)
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
async def test_bodies_are_read_by_seq_and_leases_are_recorded_later(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        big = bytes(range(256)) * 64  # 16 KiB: kept in a segment, the small one in its row
        a, in_row = await store.insert("aaaaaa", 1, b"body-a", 1.0)
        b, in_segment = await store.insert("bbbbbb", 1, big, 1.0)
        done = await insert_seq(store, "cccccc", 1, b"body-c", 1.0)
        await store.finish([Outcome(done, DIGEST)], "w0", 2.0)
        assert in_row is None and in_segment is not None
        assert store.read_bodies([(a, 6, in_row), (b, len(big), in_segment)]) == {a: b"body-a", b: big}
        # the scheduler records only the leases it handed out; one for a job finished meanwhile
        # (a late result won the race) must not make that job run again
        store.record_leases([(a, "lease-a"), (b, "lease-b"), (done, "lease-c")], "w1")
        await flush(store)  # the lease record is queued without waiting; a later run commits it
        for seq, lease_id in ((a, "lease-a"), (b, "lease-b")):
            record = store.get(seq)
            assert (record.state, record.attempts, record.worker, record.lease_id) == (State.RUNNING, 1, "w1", lease_id)
            assert store.grant(lease_id) == Grant((seq, "w1"))
        record = store.get(done)
        assert (record.state, record.attempts, record.worker, record.lease_id) == (State.COMPLETED, 0, "w0", None)


@aio
async def test_a_finished_job_has_no_body_to_hand_out(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        done = await insert_seq(store, "cccccc", 1, b"body-c", 1.0)
        await store.finish([Outcome(done, DIGEST)], "w0", 2.0)
        assert store.read_bodies([(done, 6, None)]) == {}


@aio
async def test_lease_records_are_kept_while_the_job_is_and_its_current_lease_is_cleared_on_finish(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        seq = await insert_seq(store, "aaaaaa", 1, b"x", 1.0)
        store.record_leases([(seq, "first")], "w1")
        await store.requeue([seq])
        assert store.get(seq).lease_id is None  # requeued: no current lease
        store.record_leases([(seq, "second")], "w2")
        await flush(store)
        assert (store.get(seq).lease_id, store.get(seq).attempts) == ("second", 2)
        assert (store.grant("first"), store.grant("second")) == (Grant((seq, "w1")), Grant((seq, "w2")))
        await store.finish([Outcome(seq, DIGEST)], "w1", 5.0)
        record = store.get(seq)
        assert (record.lease_id, record.worker) == (None, "w1")  # the late result's worker is recorded
        assert store.grant("first").worker == "w1"  # kept with the result
        assert await store.expire_results(6.0) == 1
        assert store.grant("first") is None and store.grant("second") is None


@aio
async def test_finish_first_outcome_wins_and_drops_the_body(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        a = await insert_seq(store, "aaaaaa", 3, b"body", 1.0)
        b = await insert_seq(store, "bbbbbb", 3, b"body", 1.0)
        store.record_leases([(a, "la"), (b, "lb")], "w1")
        assert await store.finish([Outcome(a, DIGEST), Outcome(b, None, "boom")], None, 5.0) == [a, b]
        assert await store.finish([Outcome(a, OTHER_DIGEST), Outcome(b, DIGEST)], "w2", 6.0) == []
        ra, rb = store.get(a), store.get(b)
        assert (ra.state, ra.result, ra.error, ra.completed_at, ra.worker) == (State.COMPLETED, DIGEST, None, 5.0, "w1")
        assert (rb.state, rb.result, rb.error) == (State.FAILED, None, "boom")
        bodies = await store.db.run(lambda c: c.execute("SELECT body FROM jobs").fetchall())
        assert bodies == [(None,), (None,)]


@aio
async def test_requeue_only_touches_running_jobs_and_may_refund_the_attempt(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        a, b, c = [await insert_seq(store, n, 1, b"x", 1.0) for n in ("aaaaaa", "bbbbbb", "cccccc")]
        store.record_leases([(a, "la"), (b, "lb")], "w1")
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
async def test_open_jobs_counts_and_expire_results(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        q = await insert_seq(store, "qqqqqq", 1, b"x", 0.0)
        r = await insert_seq(store, "rrrrrr", 1, b"x", 0.0)
        old = await insert_seq(store, "oooooo", 1, b"x", 0.0)
        new = await insert_seq(store, "nnnnnn", 1, b"x", 0.0)
        failed = await insert_seq(store, "ffffff", 1, b"x", 0.0)
        store.record_leases([(r, "lr"), (old, "lo")], "w")
        await store.finish([Outcome(old, DIGEST)], "w", 10.0)
        await store.finish([Outcome(new, DIGEST)], "w", 100.0)
        await store.finish([Outcome(failed, None, "bad")], "w", 100.0)
        records, grants = await store.open_jobs()
        assert [(j.seq, j.state, j.lease_id) for j in records] == [(q, State.QUEUED, None), (r, State.RUNNING, "lr")]
        assert grants == [("lr", Grant((r, "w")))]  # the finished job's lease is not an open one
        assert store.counts() == {State.COMPLETED: 2, State.FAILED: 1}
        assert await store.expire_results(50.0) == 1
        assert store.get(old) is None
        assert store.get(q) is not None  # open jobs never expire, however old
        assert store.counts() == {State.COMPLETED: 1, State.FAILED: 1}


def nonzero(counts: dict[State, int]) -> dict[State, int]:
    return {state: n for state, n in counts.items() if n}


@aio
async def test_counts_are_maintained_not_scanned_and_rebuilt_at_start(tmp_path):
    path = tmp_path / "jobs.db"
    async with opened_store(path) as store:
        seqs = [await insert_seq(store, f"n{i}aaaa", 1, b"x", 0.0) for i in range(4)]
        assert store.counts() == {}
        await store.finish([Outcome(seqs[0], DIGEST), Outcome(seqs[1], None, "e")], "w", 10.0)
        await store.finish([Outcome(seqs[0], DIGEST)], "w", 11.0)  # a duplicate counts nothing
        assert store.counts() == {State.COMPLETED: 1, State.FAILED: 1}
        await store.finish([Outcome(seqs[2], DIGEST)], "w", 20.0)
        # a row finished behind the store's back is not seen: the counter is not a scan
        await store.db.run(lambda c: c.execute(f"UPDATE jobs SET state = 2, completed_at = 30 WHERE seq = {seqs[3]}"))
        assert store.counts() == {State.COMPLETED: 2, State.FAILED: 1}
        assert await store.expire_results(15.0) == 2
        assert nonzero(store.counts()) == {State.COMPLETED: 1}
    async with opened_store(path) as store:
        assert store.counts() == {State.COMPLETED: 2}  # counted once at start, from what is there


@aio
async def test_data_survives_a_reopen(tmp_path):
    path = tmp_path / "jobs.db"
    async with opened_store(path, synchronous="FULL") as store:
        seq = await insert_seq(store, "abc234", 9, b"kept", 1.0)
    async with opened_store(path) as store:
        assert store.get(seq).nonce == "abc234"
        records, grants = await store.open_jobs()
        assert [j.seq for j in records] == [seq] and grants == []


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
async def test_meta_values_are_kept_across_a_reopen(tmp_path):
    path = tmp_path / "jobs.db"
    async with opened_store(path) as store:
        assert await store.get_meta("loans.lent") is None
        await store.set_meta("loans.lent", "3", durable=True)
        await store.set_meta("loans.lent", "4")
        assert await store.get_meta("loans.lent") == "4"
    async with opened_store(path) as store:
        assert await store.get_meta("loans.lent") == "4"


OLD_SCHEMA = """
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, nonce TEXT NOT NULL, iterations INTEGER NOT NULL,
    size INTEGER NOT NULL, body BLOB, state INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT, enqueued_at REAL NOT NULL, completed_at REAL, result BLOB, error TEXT,
    delivered INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_undelivered ON jobs (completed_at) WHERE delivered = 0 AND state >= 2;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('server_name', 'a');
INSERT INTO jobs (nonce, iterations, size, body, state, enqueued_at) VALUES ('qqqqqq', 3, 4, X'71756575', 0, 1.0);
INSERT INTO jobs (nonce, iterations, size, body, state, attempts, worker, enqueued_at)
    VALUES ('rrrrrr', 1, 1, X'72', 1, 1, 'old-worker', 2.0);
INSERT INTO jobs (nonce, iterations, size, state, attempts, worker, enqueued_at, completed_at, result)
    VALUES ('dddddd', 1, 1, 2, 1, 'old-worker', 3.0, 4.0, zeroblob(64));
"""


@aio
async def test_a_state_dir_of_the_previous_schema_is_migrated(tmp_path):
    path = tmp_path / "jobs.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
    async with opened_store(path) as store:
        await store.check_identity("a")
        assert store.counts() == {State.COMPLETED: 1}
        records, grants = await store.open_jobs()
        assert [(r.nonce, r.state, r.lease_id) for r in records] == [
            ("qqqqqq", State.QUEUED, None),
            ("rrrrrr", State.RUNNING, None),
        ]
        assert grants == []
        assert all(r.where is None for r in records)  # bodies of that version are in their rows ...
        assert store.read_bodies([(r.seq, r.size, r.where) for r in records]) == {1: b"queu", 2: b"r"}  # ... read there
        store.record_leases([(1, "new-lease")], "w1")
        await flush(store)
        assert (store.get(1).lease_id, store.grant("new-lease")) == ("new-lease", Grant((1, "w1")))
        (pulled,) = await store.reserve(10, "h1")  # the old finished row is pullable
        assert (pulled.nonce, pulled.result) == ("dddddd", bytes(64))
        assert await store.confirm("h1") == 1
        assert await store.finish([Outcome(2, DIGEST)], "w1", 5.0) == [2]
    with sqlite3.connect(path) as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"lease_id", "handout", "seg", "off"} <= columns
    assert {"jobs_pullable", "jobs_open_seg"} <= indexes and "jobs_undelivered" not in indexes
    async with opened_store(path) as store:  # and it opens again as it is now
        assert store.counts() == {State.COMPLETED: 2}


@aio
async def test_a_closed_store_raises_store_error(tmp_path):
    store = Store(tmp_path / "jobs.db")
    with pytest.raises(StoreError, match="closed"):
        await store.insert("aaaaaa", 1, b"x", 1.0)  # never started
    await store.start()
    seq = await insert_seq(store, "aaaaaa", 1, b"x", 1.0)
    await store.close()
    await store.close()  # twice is fine
    with pytest.raises(StoreError):
        await store.insert("bbbbbb", 1, b"x", 1.0)
    with pytest.raises(StoreError):
        store.get(seq)
    with pytest.raises(StoreError):
        store.read_bodies([(seq, 1, None)])
    with pytest.raises(StoreError):
        store.record_leases([(seq, "l")], "w")
    with pytest.raises(StoreError):
        store.grant("l")
    with pytest.raises(StoreError):
        await store.reserve(1, "h")
