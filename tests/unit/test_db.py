"""server.db: the writer thread on a real SQLite file: group commits (bounded in count and bytes),
per-operation rollback (by a savepoint, or by SQLite itself for a one-statement operation), the
hook that runs before a durable commit, and the write-ahead log kept bounded by checkpoints."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Coroutine
from typing import Any

import pytest

from server import db as db_module
from server.db import Database
from server.store import INLINE_BODY_BYTES, Store, StoreError
from tests.unit.support import Gate, aio, opened_store, wait_in_thread


def committed_count(store: Store) -> int:
    """Rows visible to a separate connection: what is committed, nothing in flight."""
    with sqlite3.connect(store.path) as conn:
        return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])


async def in_one_batch(store: Store, *middle: Coroutine[Any, Any, Any]) -> list[asyncio.Future[Any]]:
    """Queues an insert of 'aaaaaa', the `middle` operations, then an insert of 'bbbbbb' while the
    writer is held at a gate, so all run in one batch in that order; their futures, once it ran."""
    gate = Gate()
    blocker = asyncio.ensure_future(store.db.run(gate))
    await wait_in_thread(gate.entered)
    ops = (store.insert("aaaaaa", 1, b"x", 1.0), *middle, store.insert("bbbbbb", 1, b"x", 1.0))
    futures = [asyncio.ensure_future(op) for op in ops]
    await asyncio.sleep(0)  # let every task queue its operation
    gate.open()
    await blocker
    return futures


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
        seqs = [seq for seq, _ in await asyncio.gather(*inserts)]
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
        seqs = [seq for seq, _ in await asyncio.gather(*inserts, huge)]
        assert sorted(seqs) == list(range(1, 22)) and committed_count(store) == 21
        # the gate alone; then three 300-byte inserts per commit (a fourth would pass 1000 bytes),
        # seven commits for twenty; then the 5000-byte one in a commit of its own
        assert store.db.commits - before == 1 + 7 + 1


@aio
async def test_an_operation_that_raises_rolls_back_only_itself(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:

        def insert_then_fail(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO jobs (nonce, iterations, size, state, enqueued_at) VALUES ('zzzzzz', 1, 0, 0, 0)")
            raise ValueError("bad operation")

        def bad_sql(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO no_such_table VALUES (1)")

        before, failing, broken, after = await in_one_batch(
            store, store.db.run(insert_then_fail), store.db.run(bad_sql)
        )
        (a, _), (b, _) = await asyncio.gather(before, after)
        with pytest.raises(StoreError, match="ValueError: bad operation"):
            await failing
        with pytest.raises(StoreError, match="no such table"):
            await broken
        records, _ = await store.open_jobs()
        assert [j.nonce for j in records] == ["aaaaaa", "bbbbbb"]
        assert store.get(a).nonce == "aaaaaa" and store.get(b).nonce == "bbbbbb"


@aio
async def test_a_one_statement_operation_that_fails_rolls_back_only_itself_without_a_savepoint(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:

        def duplicate_seq(conn: sqlite3.Connection) -> None:  # one statement, refused by SQLite itself
            conn.execute(
                "INSERT INTO jobs (seq, nonce, iterations, size, state, enqueued_at) VALUES (1, 'dup', 1, 0, 0, 0)"
            )

        # 'aaaaaa' takes seq 1 (an insert is one statement too)
        before, failing, after = await in_one_batch(store, store.db.run(duplicate_seq, one_statement=True))
        await asyncio.gather(before, after)
        with pytest.raises(StoreError, match="UNIQUE constraint"):
            await failing
        assert committed_count(store) == 2


@aio
async def test_when_sqlite_rolls_the_whole_transaction_back_no_operation_of_the_batch_is_acknowledged(tmp_path):
    """As SQLite may on a full disk or an I/O error: what ran before in the batch is gone too, so
    each operation of the batch fails, and none runs after it outside a transaction."""
    async with opened_store(tmp_path / "jobs.db") as store:

        def rolled_back(conn: sqlite3.Connection) -> None:
            conn.execute("ROLLBACK")  # what SQLite does by itself on such errors
            raise sqlite3.OperationalError("database or disk is full")

        batch = await in_one_batch(store, store.db.run(rolled_back, one_statement=True))
        results = await asyncio.gather(*batch, return_exceptions=True)
        assert [type(r) for r in results] == [StoreError, StoreError, StoreError]
        assert committed_count(store) == 0
        seq, _ = await store.insert("cccccc", 1, b"x", 1.0)  # the store goes on
        assert committed_count(store) == 1 and store.get(seq).nonce == "cccccc"


def wal_size(store: Store) -> int:
    try:
        return os.stat(f"{store.path}-wal").st_size
    except FileNotFoundError:
        return 0


@aio
async def test_the_wal_is_checkpointed_when_it_grows_past_its_limit(tmp_path, monkeypatch):
    limit = 128 << 10  # above what creating the schema leaves in the log
    monkeypatch.setattr(db_module, "WAL_LIMIT_BYTES", limit)
    async with opened_store(tmp_path / "jobs.db") as store:
        largest = one_commit = 0
        previous = wal_size(store)
        for i in range(48):  # 48 bodies of 8 KiB kept in their rows (28-36 KiB of log each): ten times the limit
            await store.insert(f"n{i:05d}", 1, os.urandom(INLINE_BODY_BYTES), 1.0)
            size = wal_size(store)
            one_commit = max(one_commit, size - previous)
            largest, previous = max(largest, size), size
        assert store.db.checkpoints > 0
        # after each commit the log is cut back once above the limit: it never holds more than
        # the commit that took it past the limit (seen before the writer cut it back)
        assert one_commit < limit and largest <= limit + one_commit
        assert wal_size(store) <= limit
        assert committed_count(store) == 48


@aio
async def test_without_pressure_the_wal_is_not_checkpointed(tmp_path):
    async with opened_store(tmp_path / "jobs.db") as store:
        for i in range(5):
            await store.insert(f"n{i:05d}", 1, b"x", 1.0)
        assert store.db.checkpoints == 0 and wal_size(store) > 0


@aio
async def test_commits_never_stat_the_wal(tmp_path, monkeypatch):
    """The writer sizes the log with lseek on a descriptor it keeps: since Linux 6.13 a stat makes
    the file's next write take a fine-grained time, which dirties its inode, and the next commit's
    fdatasync then writes the inode too (3 disk writes a commit here instead of 2, +50 us each)."""
    monkeypatch.setattr(db_module, "WAL_LIMIT_BYTES", 64 << 10)  # and the bound still holds
    statted: list[str] = []
    real_stat = os.stat

    def watched_stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        statted.append(str(path))
        return real_stat(path, *args, **kwargs)

    async with opened_store(tmp_path / "jobs.db") as store:
        monkeypatch.setattr(os, "stat", watched_stat)
        for i in range(24):
            await store.insert(f"n{i:05d}", 1, os.urandom(INLINE_BODY_BYTES), 1.0)
        await store.db.run(lambda conn: store.db.sync_log())
        monkeypatch.undo()
        assert store.db.checkpoints > 0 and wal_size(store) <= (64 << 10) + (40 << 10)
        assert not [p for p in statted if p.endswith("-wal")]
        assert committed_count(store) == 24


def visible_rows(path) -> list[int]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return [v for (v,) in conn.execute("SELECT v FROM t ORDER BY v")]


def insert_row(v: int):
    return lambda conn: conn.execute("INSERT INTO t VALUES (?)", (v,))


@aio
async def test_the_durable_commit_hook_runs_before_the_commit_of_durable_batches_only(tmp_path):
    path = tmp_path / "t.db"
    seen: list[list[int]] = []  # at each call of the hook: the rows another connection sees
    failures: list[OSError] = []

    def before_durable_commit() -> None:
        seen.append(visible_rows(path))
        if failures:
            raise failures.pop()

    database = Database(
        path,
        synchronous="NORMAL",
        setup=lambda conn: conn.execute("CREATE TABLE IF NOT EXISTS t (v INTEGER)"),
        before_durable_commit=before_durable_commit,
    )
    await database.start()
    try:
        await database.run(insert_row(1), durable=False)
        assert seen == []  # a relaxed batch
        await database.run(insert_row(2))
        assert seen == [[1]]  # before 2 was committed
        gate = Gate()
        blocked = asyncio.ensure_future(database.run(gate, durable=False))
        await wait_in_thread(gate.entered)
        mixed = [database.queue(insert_row(3), durable=False), database.queue(insert_row(4), durable=True)]
        gate.open()
        await blocked
        await asyncio.gather(*mixed)
        assert seen == [[1], [1, 2]]  # once for a batch holding a durable operation
        failures.append(OSError(5, "Input/output error"))  # the files the rows point into could not be synced
        with pytest.raises(StoreError, match="Input/output error"):
            await database.run(insert_row(5))
        await database.run(insert_row(6))  # the writer carries on
        assert visible_rows(path) == [1, 2, 3, 4, 6]  # nothing of the failed batch was committed
    finally:
        await database.close()
