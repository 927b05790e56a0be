"""server.db: the writer thread on a real SQLite file: group commits (bounded in count and bytes),
per-operation rollback, and the write-ahead log kept bounded by checkpoints."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading

import pytest

from server import db as db_module
from server.store import Store, StoreError
from tests.unit.support import aio, opened_store


def committed_count(store: Store) -> int:
    """Rows visible to a separate connection: what is committed, nothing in flight."""
    with sqlite3.connect(store.path) as conn:
        return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])


async def wait_in_thread(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, 5.0), "the writer thread never got there"


class Gate:
    """An operation that holds the writer thread until opened, so what follows queues up."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(self, conn: sqlite3.Connection) -> None:
        self.entered.set()
        assert self.opened.wait(5.0)

    def open(self) -> None:
        self.opened.set()


@aio
async def test_group_commit_acknowledges_only_after_the_whole_batch_committed(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        first, last = Gate(), Gate()
        blocked = asyncio.ensure_future(store.db.run(first))
        await wait_in_thread(first.entered)  # the writer is busy: what follows queues up
        inserts = [asyncio.ensure_future(store.insert(f"n{i:05d}", 1, b"x", 1.0)) for i in range(200)]
        closing = asyncio.ensure_future(store.db.run(last))
        await asyncio.sleep(0)  # let every task queue its operation
        first.open()
        await blocked
        await wait_in_thread(last.entered)  # the 200 inserts ran in this batch, before the last op
        assert committed_count(store) == 0  # ... inside one open transaction
        assert not any(task.done() for task in inserts)  # and nobody was told yet
        last.open()
        seqs = await asyncio.gather(*inserts)
        await closing
        assert sorted(seqs) == list(range(1, 201))
        assert committed_count(store) == 200


@aio
async def test_a_group_commit_is_bounded_in_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(db_module, "MAX_BATCH_BYTES", 1000)
    async with opened_store(tmp_path / "jobs.db") as store:
        gate = Gate()
        before = store.db.commits
        blocked = asyncio.ensure_future(store.db.run(gate))
        await wait_in_thread(gate.entered)
        inserts = [asyncio.ensure_future(store.insert(f"n{i:05d}", 1, b"x" * 300, 1.0)) for i in range(20)]
        huge = asyncio.ensure_future(store.insert("huge00", 1, b"y" * 5000, 1.0))  # alone above the bound
        await asyncio.sleep(0)
        gate.open()
        await blocked
        seqs = await asyncio.gather(*inserts, huge)
        assert sorted(seqs) == list(range(1, 22)) and committed_count(store) == 21
        # the gate alone; then three 300-byte inserts per commit (a fourth would pass 1000 bytes),
        # seven commits for twenty; then the 5000-byte one in a commit of its own
        assert store.db.commits - before == 1 + 7 + 1


@aio
async def test_an_operation_that_raises_rolls_back_only_itself(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        gate = Gate()

        def insert_then_fail(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO jobs (nonce, iterations, size, state, enqueued_at) VALUES ('zzzzzz', 1, 0, 0, 0)")
            raise ValueError("bad operation")

        def bad_sql(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO no_such_table VALUES (1)")

        blocker = asyncio.ensure_future(store.db.run(gate))
        await wait_in_thread(gate.entered)
        before = asyncio.ensure_future(store.insert("aaaaaa", 1, b"x", 1.0))
        failing = asyncio.ensure_future(store.db.run(insert_then_fail))
        broken = asyncio.ensure_future(store.db.run(bad_sql))
        after = asyncio.ensure_future(store.insert("bbbbbb", 1, b"x", 1.0))
        await asyncio.sleep(0)
        gate.open()
        await blocker
        a, b = await asyncio.gather(before, after)
        with pytest.raises(StoreError, match="ValueError: bad operation"):
            await failing
        with pytest.raises(StoreError, match="no such table"):
            await broken
        records, _ = await store.open_jobs()
        assert [j.nonce for j in records] == ["aaaaaa", "bbbbbb"]
        assert store.get(a).nonce == "aaaaaa" and store.get(b).nonce == "bbbbbb"


def wal_size(store: Store) -> int:
    try:
        return os.stat(f"{store.path}-wal").st_size
    except FileNotFoundError:
        return 0


@aio
async def test_the_wal_is_checkpointed_when_it_grows_past_its_limit(tmp_path, monkeypatch):
    limit = 64 << 10
    monkeypatch.setattr(db_module, "WAL_LIMIT_BYTES", limit)
    async with opened_store(tmp_path / "jobs.db") as store:
        largest = 0
        for i in range(48):  # 48 x 8 KiB: six times the limit
            await store.insert(f"n{i:05d}", 1, os.urandom(8 << 10), 1.0)
            largest = max(largest, wal_size(store))
        assert store.db.checkpoints > 0
        # after each commit the log is cut back once above the limit: it never holds much more
        assert largest <= limit + (32 << 10)
        assert wal_size(store) <= limit
        assert committed_count(store) == 48


@aio
async def test_without_pressure_the_wal_is_not_checkpointed(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        for i in range(5):
            await store.insert(f"n{i:05d}", 1, b"x", 1.0)
        assert store.db.checkpoints == 0 and wal_size(store) > 0
