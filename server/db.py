"""One SQLite file (WAL) driven by one writer thread with group commits, and a reader for the loop.

Every write is a function of the connection. The writer thread takes the operations that are
waiting (at most MAX_BATCH of them and about MAX_BATCH_BYTES of data), runs each inside a
savepoint of one transaction, commits once, and only then resolves their futures with one wake-up
of the event loop: an acknowledged operation is committed, and one fsync serves a whole batch.
An operation that changes the database with one statement only (`one_statement`) runs without a
savepoint: SQLite undoes a failed statement by itself, and the savepoint's two statements are two
more hand-overs of the GIL to the busy event loop and back.

Durability is chosen per operation: a batch holding any durable operation commits with the
configured `synchronous` (FULL: survives a power loss); a batch of relaxed ones only (leases,
results) skips the fsync: safe against a process crash, and a later durable commit syncs the
whole log, so what reaches the disk keeps its order.

The write-ahead log is kept bounded: after a commit that leaves it larger than WAL_LIMIT_BYTES
the writer checkpoints it and truncates the file (readers are short, so this does not wait long).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_BATCH = 2000
MAX_BATCH_BYTES = 64 << 20  # one group commit carries about this much data at most (but >= 1 op)
WAL_LIMIT_BYTES = 256 << 20


class StoreError(Exception):
    """The database could not store or read (disk full, I/O error, closed)."""


class _Op(NamedTuple):
    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    durable: bool
    nbytes: int
    one_statement: bool


Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]


def as_store_error(exc: BaseException) -> StoreError:
    return exc if isinstance(exc, StoreError) else StoreError(f"{type(exc).__name__}: {exc}")


class Database:
    def __init__(
        self,
        path: Path,
        *,
        synchronous: str,
        setup: Callable[[sqlite3.Connection], None],
        before_durable_commit: Callable[[], None] = lambda: None,
        on_commit: Callable[[int, bool, float], None] | None = None,
    ) -> None:
        self.path = path
        self.synchronous = synchronous.upper()
        self._setup = setup
        self._before_durable_commit = before_durable_commit  # e.g. sync the files the rows point into
        self._on_commit = on_commit  # told (operations, durable, seconds) after each commit, in this thread
        self._ops: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._reader: sqlite3.Connection | None = None
        self._relaxed = "NORMAL" if self.synchronous in ("FULL", "EXTRA") else self.synchronous
        self._current_sync = self.synchronous
        self._carry: _Op | None = None  # the op that did not fit the last batch
        self._wal_fd: int | None = None  # the writer thread's, see _log_fd
        self.commits = 0
        self.checkpoints = 0

    # -- lifecycle -------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA busy_timeout=5000")
        self._setup(conn)
        return conn

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._loop = asyncio.get_running_loop()
        conn = await asyncio.to_thread(self._connect)
        # Point reads on the event loop need no thread hop; WAL lets them run beside the writer.
        self._reader = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, check_same_thread=False)
        self._thread = threading.Thread(target=self._run, args=(conn,), name="store-writer", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        if self._thread is None or self._closed:
            return
        self._closed = True
        self._ops.put(None)
        await asyncio.to_thread(self._thread.join)
        if self._reader is not None:
            self._reader.close()

    # -- the writer thread -----------------------------------------------------------------
    def _next_batch(self) -> tuple[list[_Op], bool]:
        """The operations of the next commit, and whether to stop after it."""
        first = self._carry if self._carry is not None else self._ops.get()
        self._carry = None
        if first is None:
            return [], True
        batch, nbytes = [first], first.nbytes
        while len(batch) < MAX_BATCH:
            try:
                item = self._ops.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            if nbytes + item.nbytes > MAX_BATCH_BYTES:
                self._carry = item
                break
            batch.append(item)
            nbytes += item.nbytes
        return batch, False

    def _run(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                batch, stop = self._next_batch()
                if batch:
                    self._run_batch(conn, batch)
                    self._bound_wal(conn)
                if stop:
                    return
        finally:
            conn.close()
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        outcomes: list[Outcome] = []
        durable = any(op.durable for op in batch)
        sync = self.synchronous if durable else self._relaxed
        try:
            if sync != self._current_sync:
                conn.execute(f"PRAGMA synchronous={sync}")
                self._current_sync = sync
            conn.execute("BEGIN IMMEDIATE")
            for op in batch:
                outcomes.append(self._run_op(conn, op))
            committing = time.perf_counter()
            if durable:
                self._before_durable_commit()
            conn.execute("COMMIT")
            self.commits += 1
            if self._on_commit is not None:
                self._on_commit(len(batch), durable, time.perf_counter() - committing)
        except (sqlite3.Error, OSError, StoreError) as exc:
            log.error("store commit failed (%d operations lost, none acknowledged): %s", len(batch), exc)
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            error = as_store_error(exc)
            outcomes = [(op.future, None, error) for op in batch]
        # One wake-up of the event loop per group commit, not one per operation.
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_resolve_all, outcomes)

    @staticmethod
    def _run_op(conn: sqlite3.Connection, op: _Op) -> Outcome:
        """One operation inside the batch's transaction; its failure is its own, unless SQLite
        rolled the whole transaction back (a full disk, an I/O error): then the batch fails."""
        if op.one_statement:
            try:
                return op.future, op.fn(conn), None
            except Exception as exc:  # handed to the caller's future, or the whole batch fails
                if not conn.in_transaction:  # what ran before it in this batch is gone too
                    raise as_store_error(exc) from exc
                return op.future, None, as_store_error(exc)
        conn.execute("SAVEPOINT op")
        try:
            result = op.fn(conn)
            conn.execute("RELEASE op")
            return op.future, result, None
        except Exception as exc:  # noqa: BLE001 - handed to the caller's future
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            return op.future, None, as_store_error(exc)

    def _bound_wal(self, conn: sqlite3.Connection) -> None:
        fd = self._log_fd()
        if fd is None:
            return
        try:
            # lseek, not stat: since Linux 6.13 a stat makes the next write stamp the file with a
            # fine-grained time, which dirties its inode, and every commit's fdatasync then writes
            # the inode too (3 disk writes a commit instead of 2 here, +50 us a fdatasync)
            wal = os.lseek(fd, 0, os.SEEK_END)
        except OSError:
            return
        if wal > WAL_LIMIT_BYTES:
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                self.checkpoints += 1
            except sqlite3.Error as exc:
                log.warning("WAL checkpoint failed (retried after the next commit): %s", exc)

    def _log_fd(self) -> int | None:
        """The writer thread's descriptor of the write-ahead log, opened once it exists; SQLite
        keeps the file (the same inode: a checkpoint truncates it) until its last connection closes."""
        if self._wal_fd is None:
            try:
                self._wal_fd = os.open(f"{self.path}-wal", os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return None
        return self._wal_fd

    def sync_log(self) -> None:
        """fdatasync the write-ahead log, from the writer thread: every commit so far, relaxed ones
        too, then survives a power loss (a commit that writes nothing syncs nothing by itself)."""
        fd = self._log_fd()
        if fd is not None:  # no log yet: nothing was committed through one
            os.fdatasync(fd)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- the API ---------------------------------------------------------------------------
    async def run(
        self,
        fn: Callable[[sqlite3.Connection], T],
        *,
        durable: bool = True,
        nbytes: int = 0,
        one_statement: bool = False,
    ) -> T:
        """Run fn(conn) in the next group commit; returns once it is committed (and, when
        durable, synced to disk). `nbytes` is about how much data it writes; `one_statement`:
        it changes the database with one statement (not executemany) and nothing else."""
        result: T = await self.queue(fn, durable=durable, nbytes=nbytes, one_statement=one_statement)
        return result

    def queue(
        self,
        fn: Callable[[sqlite3.Connection], T],
        *,
        durable: bool,
        nbytes: int = 0,
        one_statement: bool = False,
    ) -> asyncio.Future[T]:
        """Queue fn(conn) for the next group commit; the future resolves once it is committed.
        Operations commit in the order they are queued."""
        if self._closed or self._thread is None or self._loop is None:
            raise StoreError("store is closed")
        future: asyncio.Future[T] = self._loop.create_future()
        self._ops.put(_Op(fn, future, durable, nbytes, one_statement))
        return future

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A short read on the calling (event-loop) thread, from what is committed."""
        if self._closed or self._reader is None:
            raise StoreError("store is closed")
        try:
            return fn(self._reader)
        except sqlite3.Error as exc:
            raise as_store_error(exc) from None


def _resolve_all(outcomes: list[Outcome]) -> None:
    for future, result, error in outcomes:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
