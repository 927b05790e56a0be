"""server.store with server.bodies on real files: where a body is kept (its row or a segment), the
fdatasync before the commit of the rows that point into a segment, garbage left by what rolled
back, segments retired once every job in them has finished and written over again, a restart, and
a state dir from before segments existed (the segment files alone: test_bodies.py)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3

import pytest

from server import bodies as bodies_module
from server.jobs import Outcome, State
from server.store import INLINE_BODY_BYTES, Store, StoreError
from tests.unit.support import Gate, aio, flush, opened_store, wait_in_thread

DIGEST = bytes(range(64))
BIG = 16 << 10  # bigger than INLINE_BODY_BYTES: kept in a segment


@pytest.fixture(autouse=True)
def room_to_spare(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spares are kept whatever this machine's free space (test_bodies.py tests the need for room)."""
    monkeypatch.setattr(bodies_module, "SPARES_NEED_FREE_BYTES", 0)


def committed_rows(store: Store) -> int:
    """Rows visible to a separate connection: what is committed, nothing in flight."""
    with contextlib.closing(sqlite3.connect(store.path)) as conn:
        return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])


def segment_sizes(store: Store) -> dict[int, int]:
    return {s: store.bodies.path(s).stat().st_size for s in store.bodies.segments()}


def record_fdatasyncs(monkeypatch: pytest.MonkeyPatch, store: Store) -> list[tuple[str, int]]:
    """From now on, at each fdatasync: the file synced and how many rows were committed then."""
    calls: list[tuple[str, int]] = []
    real = os.fdatasync

    def spy(fd: int) -> None:
        calls.append((os.path.basename(os.readlink(f"/proc/self/fd/{fd}")), committed_rows(store)))
        real(fd)

    monkeypatch.setattr(os, "fdatasync", spy)
    return calls


@aio
async def test_small_bodies_stay_in_their_row_and_big_ones_are_written_once_to_a_segment(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        small, big = os.urandom(INLINE_BODY_BYTES), os.urandom(INLINE_BODY_BYTES + 1)
        s, in_row = await store.insert("ssssss", 1, small, 1.0)  # the biggest body kept in its row
        e, empty_in_row = await store.insert("eeeeee", 1, b"", 1.0)
        b, in_segment = await store.insert("bbbbbb", 1, big, 1.0)
        assert (in_row, empty_in_row, in_segment) == (None, None, (store.bodies.current, 0))
        assert (store.get(s).where, store.get(b).where) == (None, in_segment)
        assert segment_sizes(store) == {store.bodies.current: len(big)}  # only the big body touched it
        wanted = [(s, len(small), in_row), (e, 0, empty_in_row), (b, len(big), in_segment)]
        assert store.read_bodies(wanted) == {s: small, e: b"", b: big}
        sqlite_files = b"".join(p.read_bytes() for p in tmp_path.glob("jobs.db*"))  # the database and its log
        assert small[:64] in sqlite_files
        assert not any(big[i : i + 64] in sqlite_files for i in range(0, len(big) - 64, 512))  # written once


@aio
async def test_a_segment_is_fdatasynced_before_the_rows_pointing_into_it_commit(tmp_path, monkeypatch):
    async with opened_store(tmp_path / "jobs.db") as store:
        calls = record_fdatasyncs(monkeypatch, store)
        await store.insert("aaaaaa", 1, b"small", 1.0)
        assert calls == []  # a body in its row: SQLite's own sync covers it
        gate = Gate()
        blocked = asyncio.ensure_future(store.db.run(gate, durable=False))
        await wait_in_thread(gate.entered)  # the writer is busy: the inserts queue up for one commit
        inserts = [asyncio.ensure_future(store.insert(f"n{i:05d}", 1, os.urandom(BIG), 1.0)) for i in range(5)]
        await asyncio.sleep(0)
        gate.open()
        await blocked
        inserted = await asyncio.gather(*inserts)
        assert {segment for _, (segment, _) in inserted} == {store.bodies.current}
        # one fdatasync for the five, while only the first row was committed; then the rows
        assert calls == [(store.bodies.path(store.bodies.current).name, 1)] and committed_rows(store) == 6
        seq = inserted[0][0]
        store.record_leases([(seq, "lease")], "w1")  # relaxed operations sync nothing
        await store.finish([Outcome(seq, DIGEST)], "w1", 2.0)
        await store.set_meta("key", "value")
        await store.reserve(10, "handout")
        await store.unreserve("handout")
        await flush(store)
        assert len(calls) == 1


@aio
async def test_bodies_of_what_rolled_back_are_garbage_collected_with_their_segment(tmp_path, monkeypatch):
    monkeypatch.setattr(bodies_module, "SEGMENT_BYTES", 2 * BIG)
    async with opened_store(tmp_path / "jobs.db") as store:
        first = store.bodies.current
        with pytest.raises(StoreError, match="NOT NULL"):  # the row is refused after its body was appended
            await store.insert(None, 1, os.urandom(BIG), 1.0)  # type: ignore[arg-type]
        real_fdatasync = os.fdatasync

        def fails_once(fd: int) -> None:
            monkeypatch.setattr(os, "fdatasync", real_fdatasync)
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(os, "fdatasync", fails_once)
        with pytest.raises(StoreError, match="Input/output error"):  # the commit fails: nothing is acknowledged
            await store.insert("bbbbbb", 1, os.urandom(BIG), 1.0)
        assert committed_rows(store) == 0 and segment_sizes(store) == {first: 2 * BIG}  # bytes nobody points at
        assert await store.collect_bodies() == 0  # the current segment is never collected
        body = os.urandom(BIG)
        kept, where = await store.insert("cccccc", 1, body, 1.0)
        assert where == (first + 1, 0)  # the garbage filled the first segment
        assert await store.collect_bodies() == 1 and store.bodies.segments() == [first + 1]
        assert store.read_bodies([(kept, BIG, where)]) == {kept: body}


@aio
async def test_a_segment_is_retired_once_every_job_in_it_has_finished_never_the_current_one(tmp_path, monkeypatch):
    monkeypatch.setattr(bodies_module, "SEGMENT_BYTES", 2 * BIG)  # two bodies a segment
    async with opened_store(tmp_path / "jobs.db") as store:
        jobs = [await store.insert(f"n{i}aaaa", 1, os.urandom(BIG), 1.0) for i in range(7)]
        (j0, j1, j2, j3, j4, j5, j6), segments = zip(*jobs, strict=True)
        s1, s2, s3, s4 = sorted({segment for segment, _ in segments})
        assert store.bodies.current == s4  # s1: j0 j1, s2: j2 j3, s3: j4 j5, s4: j6
        await store.insert("inline", 1, b"small", 1.0)  # unfinished, but in its row: pins nothing
        store.record_leases([(j4, "l4")], "w")
        await store.finish([Outcome(j0, DIGEST), Outcome(j2, DIGEST), Outcome(j3, None, "failed")], "w", 2.0)
        await store.finish([Outcome(j5, DIGEST), Outcome(j6, DIGEST)], "w", 2.0)
        assert await store.collect_bodies() == 1  # s2: all finished (failed counts)
        assert store.bodies.segments() == [s1, s3, s4]  # s1: j1 queued, s3: j4 running, s4: current
        assert not store.bodies.path(s2).exists()
        await store.requeue([j4])
        assert await store.collect_bodies() == 0  # queued again: still unfinished
        await store.finish([Outcome(j1, DIGEST), Outcome(j4, DIGEST)], "w", 3.0)
        assert await store.collect_bodies() == 2
        assert store.bodies.segments() == [s4]
        assert await store.collect_bodies() == 0


@aio
async def test_the_log_is_synced_before_a_segment_emptied_by_relaxed_finishes_is_retired(tmp_path, monkeypatch):
    """A finish is a relaxed commit (no fsync) and the collector's commit writes nothing: without a
    sync of the log, a power loss could bring the job back unfinished with its body gone."""
    monkeypatch.setattr(bodies_module, "SEGMENT_BYTES", BIG)  # one body a segment
    async with opened_store(tmp_path / "jobs.db") as store:
        (j0, (s1, _)), _ = [await store.insert(f"n{i}aaaa", 1, os.urandom(BIG), 1.0) for i in range(2)]
        await store.finish([Outcome(j0, DIGEST)], "w", 2.0)
        calls = record_fdatasyncs(monkeypatch, store)
        real_retire = store.bodies.retire
        monkeypatch.setattr(
            store.bodies, "retire", lambda segments: calls.append(("retire", *segments)) or real_retire(segments)
        )
        assert await store.collect_bodies() == 1
        assert calls == [("jobs.db-wal", 2), ("retire", s1)]
        assert await store.collect_bodies() == 0 and calls[2:] == [("retire",)]  # nothing retired: nothing synced


@aio
async def test_a_retired_segment_is_written_over_by_a_later_one_whose_bodies_read_back(tmp_path, monkeypatch):
    monkeypatch.setattr(bodies_module, "SEGMENT_BYTES", 2 * BIG)  # two bodies a segment
    async with opened_store(tmp_path / "jobs.db") as store:
        (j0, _), (j1, _), (j2, (s2, _)) = [await store.insert(f"n{i}aaaa", 1, os.urandom(BIG), 1.0) for i in range(3)]
        await store.finish([Outcome(j0, DIGEST), Outcome(j1, DIGEST)], "w", 2.0)
        assert await store.collect_bodies() == 1 and store.bodies.segments() == [s2]
        [spare] = store.bodies.spares()
        recycled = spare.stat().st_ino
        assert await store.collect_bodies() == 0  # the next round: no read fd can reach the spare now
        bodies = [os.urandom(BIG) for _ in range(3)]
        jobs = [await store.insert(f"m{i}aaaa", 1, body, 3.0) for i, body in enumerate(bodies)]
        assert [where for _, where in jobs] == [(s2, BIG), (s2 + 1, 0), (s2 + 1, BIG)]
        assert store.bodies.path(s2 + 1).stat().st_ino == recycled and store.bodies.spares() == []
        wanted = [(j2, BIG, (s2, 0))] + [(seq, BIG, where) for seq, where in jobs]
        found = store.read_bodies(wanted)
        assert [found[seq] for seq, _ in jobs] == bodies


@aio
async def test_after_a_restart_bodies_are_read_from_their_segments_and_new_ones_go_to_a_new_segment(tmp_path):
    path = tmp_path / "jobs.db"
    bodies = {}
    async with opened_store(path, synchronous="FULL") as store:
        for i in range(3):
            body = os.urandom(BIG + i)
            seq, _ = await store.insert(f"n{i}aaaa", 1, body, 1.0)
            bodies[seq] = body
        old = store.bodies.current
        first, running, done = bodies
        store.record_leases([(running, "lease")], "w")
        await store.finish([Outcome(done, DIGEST)], "w", 2.0)
    async with opened_store(path) as store:
        records, _ = await store.open_jobs()
        assert [(r.seq, r.state, r.where[0]) for r in records] == [
            (first, State.QUEUED, old),
            (running, State.RUNNING, old),
        ]
        wanted = [(r.seq, r.size, r.where) for r in records]
        assert store.read_bodies(wanted) == {first: bodies[first], running: bodies[running]}
        body = os.urandom(BIG)
        seq, where = await store.insert("newaaa", 1, body, 3.0)
        assert where == (old + 1, 0)  # never appended after what the last run wrote
        assert await store.collect_bodies() == 0  # the old segment still holds two unfinished jobs
        await store.finish([Outcome(first, DIGEST), Outcome(running, DIGEST)], "w", 4.0)
        assert await store.collect_bodies() == 1
        assert store.read_bodies([(seq, BIG, where)]) == {seq: body}


PREVIOUS_SCHEMA = """
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, nonce TEXT NOT NULL, iterations INTEGER NOT NULL,
    size INTEGER NOT NULL, body BLOB, state INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT, enqueued_at REAL NOT NULL, completed_at REAL, result BLOB, error TEXT,
    delivered INTEGER NOT NULL DEFAULT 0, lease_id TEXT, handout TEXT
);
CREATE TABLE leases (lease_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, worker TEXT NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('server_name', 'a');
"""


@aio
async def test_a_state_dir_from_before_segments_keeps_its_bodies_in_their_rows(tmp_path):
    path = tmp_path / "jobs.db"
    big, small = os.urandom(64 << 10), b"small"  # that version kept every body in its row
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.executescript(PREVIOUS_SCHEMA)
        conn.execute(
            "INSERT INTO jobs (nonce, iterations, size, body, state, enqueued_at) VALUES ('qqqqqq', 1, ?, ?, 0, 1.0)",
            (len(big), big),
        )
        conn.execute(
            "INSERT INTO jobs (nonce, iterations, size, body, state, attempts, worker, enqueued_at, lease_id)"
            " VALUES ('rrrrrr', 1, ?, ?, 1, 1, 'w', 2.0, 'old-lease')",
            (len(small), small),
        )
        conn.execute("INSERT INTO leases VALUES ('old-lease', 2, 'w')")
    async with opened_store(path) as store:
        await store.check_identity("a")
        records, grants = await store.open_jobs()
        assert [(r.seq, r.state, r.where) for r in records] == [(1, State.QUEUED, None), (2, State.RUNNING, None)]
        assert [lease_id for lease_id, _ in grants] == ["old-lease"]
        assert store.read_bodies([(r.seq, r.size, r.where) for r in records]) == {1: big, 2: small}
        seq, where = await store.insert("newaaa", 1, big, 3.0)
        assert where == (store.bodies.current, 0)  # a new big body goes to a segment
        assert await store.collect_bodies() == 0
    async with opened_store(path) as store:  # and it opens again as it is now
        records, _ = await store.open_jobs()
        assert store.read_bodies([(r.seq, r.size, r.where) for r in records]) == {1: big, 2: small, seq: big}


@aio
async def test_a_segment_that_cannot_be_read_is_a_store_error(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        seq, where = await store.insert("aaaaaa", 1, os.urandom(BIG), 1.0)
        os.truncate(store.bodies.path(where[0]), BIG // 2)  # the file lost its tail (a damaged disk)
        with pytest.raises(StoreError):
            store.read_bodies([(seq, BIG, where)])
