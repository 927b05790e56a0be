"""Durable job storage: one SQLite file (WAL), one writer thread, group commits.

Every operation is a function of the connection. The writer thread takes all operations that
are waiting, runs each inside a savepoint of one transaction, commits once, and only then
resolves their futures: an acknowledged operation is on disk, and one fsync serves a whole
batch, so durability does not cost throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from server.jobs import JobRecord, Outcome, State

T = TypeVar("T")


class _Op(NamedTuple):
    """One operation for the writer thread: fn(conn), whose result resolves future."""

    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    durable: bool


log = logging.getLogger(__name__)

MAX_BATCH = 2000
Q, R, DONE = int(State.QUEUED), int(State.RUNNING), int(State.COMPLETED)  # for SQL text

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    nonce TEXT NOT NULL,
    iterations INTEGER NOT NULL,
    size INTEGER NOT NULL,
    body BLOB,                      -- dropped once the job is finished
    state INTEGER NOT NULL,         -- server.jobs.State
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    enqueued_at REAL NOT NULL,
    completed_at REAL,
    result BLOB,
    error TEXT,
    delivered INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_undelivered ON jobs (completed_at) WHERE delivered = 0 AND state >= {DONE};
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (completed_at) WHERE state >= {DONE};
CREATE INDEX IF NOT EXISTS jobs_open ON jobs (state) WHERE state < {DONE};
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_RECORD_COLUMNS = "seq, nonce, iterations, size, state, attempts, worker, enqueued_at, completed_at, result, error"


class StoreError(Exception):
    """The database could not store or read (disk full, I/O error, closed)."""


def _record(row: tuple[Any, ...]) -> JobRecord:
    seq, nonce, iterations, size, state, attempts, worker, enqueued_at, completed_at, result, error = row
    return JobRecord(
        seq=seq,
        nonce=nonce,
        iterations=iterations,
        size=size,
        state=State(state),
        attempts=attempts,
        worker=worker,
        enqueued_at=enqueued_at,
        completed_at=completed_at,
        result=None if result is None else bytes(result),
        error=error,
    )


class Store:
    def __init__(self, path: Path, *, synchronous: str = "FULL") -> None:
        self.path = path
        self.synchronous = synchronous.upper()
        self._ops: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._reader: sqlite3.Connection | None = None
        # Leases and results need not survive a power loss: lost, the job is just computed again.
        # Their commits skip the fsync (still safe against a process crash); a later durable
        # commit syncs the whole log, so the order of what reaches the disk is kept.
        self._relaxed = "NORMAL" if self.synchronous in ("FULL", "EXTRA") else self.synchronous
        self._current_sync = self.synchronous

    # -- lifecycle -------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(SCHEMA)
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
    def _run(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                first = self._ops.get()
                if first is None:
                    return
                batch = [first]
                stop = False
                while len(batch) < MAX_BATCH:
                    try:
                        item = self._ops.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stop = True
                        break
                    batch.append(item)
                self._run_batch(conn, batch)
                if stop:
                    return
        finally:
            conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        sync = self.synchronous if any(op.durable for op in batch) else self._relaxed
        try:
            if sync != self._current_sync:
                conn.execute(f"PRAGMA synchronous={sync}")
                self._current_sync = sync
            conn.execute("BEGIN IMMEDIATE")
            for fn, future, _ in batch:
                conn.execute("SAVEPOINT op")
                try:
                    outcomes.append((future, fn(conn), None))
                    conn.execute("RELEASE op")
                except Exception as exc:  # noqa: BLE001 - handed to the caller's future
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((future, None, _as_store_error(exc)))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            log.error("store commit failed (%d operations lost, none acknowledged): %s", len(batch), exc)
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            error = _as_store_error(exc)
            outcomes = [(future, None, error) for _, future, _ in batch]
        # One wake-up of the event loop per group commit, not one per operation.
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_resolve_all, outcomes)

    async def run(self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        """Run fn(conn) in the next group commit; returns once it is committed (and, when
        durable, synced to disk)."""
        result: T = await self._queue(fn, durable=durable)
        return result

    def _queue(self, fn: Callable[[sqlite3.Connection], T], *, durable: bool) -> asyncio.Future[T]:
        """Queue fn(conn) for the next group commit; the future resolves once it is committed.
        Operations commit in the order they are queued."""
        if self._closed or self._thread is None or self._loop is None:
            raise StoreError("store is closed")
        future: asyncio.Future[T] = self._loop.create_future()
        self._ops.put(_Op(fn, future, durable))
        return future

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A short read on the calling (event-loop) thread, from what is committed."""
        if self._closed or self._reader is None:
            raise StoreError("store is closed")
        try:
            return fn(self._reader)
        except sqlite3.Error as exc:
            raise _as_store_error(exc) from None

    # -- operations ------------------------------------------------------------------------
    async def check_identity(self, name: str) -> None:
        """Refuse a state dir that belongs to a server of another name (its ids would lie)."""

        def op(conn: sqlite3.Connection) -> str:
            row = conn.execute("SELECT value FROM meta WHERE key = 'server_name'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta (key, value) VALUES ('server_name', ?)", (name,))
                return name
            return str(row[0])

        stored = await self.run(op)
        if stored != name:
            raise StoreError(f"state dir belongs to server {stored!r}, not {name!r}")

    async def insert(self, nonce: str, iterations: int, body: bytes, now: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "INSERT INTO jobs (nonce, iterations, size, body, state, enqueued_at) VALUES (?, ?, ?, ?, ?, ?)",
                (nonce, iterations, len(body), body, State.QUEUED, now),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

        return await self.run(op)

    def lease(self, seqs: Sequence[int], worker: str) -> dict[int, bytes]:
        """Bodies of the jobs still unfinished among `seqs`, by seq; marks them running for the worker.

        The bodies are read from what is committed, on the calling thread; the record of the lease
        is queued without waiting: it only matters after a restart, where a lease it missed means
        the job is queued again instead of running (computed once more, never lost)."""
        marks = ",".join("?" * len(seqs))
        rows = self._read(
            lambda c: c.execute(
                f"SELECT seq, body FROM jobs WHERE seq IN ({marks}) AND state < {DONE}", list(seqs)
            ).fetchall()
        )
        bodies = {seq: bytes(body) for seq, body in rows}
        record = self._queue(_mark_leased(list(bodies), worker), durable=False)
        record.add_done_callback(_log_lease_record_failure)
        return bodies

    async def finish(self, outcomes: Iterable[Outcome], worker: str | None, now: float) -> list[int]:
        """Record results (completed) or errors (failed); the first outcome of a job wins.

        Returns the seqs that were finished by this call (the others were finished already).
        """
        outcomes = list(outcomes)

        def op(conn: sqlite3.Connection) -> list[int]:
            done = []
            for o in outcomes:
                state = State.COMPLETED if o.result is not None else State.FAILED
                cur = conn.execute(
                    "UPDATE jobs SET state = ?, result = ?, error = ?, completed_at = ?, body = NULL,"
                    f" worker = coalesce(?, worker) WHERE seq = ? AND state < {DONE}",
                    (state, o.result, o.error, now, worker, o.seq),
                )
                if cur.rowcount:
                    done.append(o.seq)
            return done

        return await self.run(op, durable=False)

    async def requeue(self, seqs: Sequence[int], *, refund_attempt: bool = False) -> None:
        def op(conn: sqlite3.Connection) -> None:
            refund = 1 if refund_attempt else 0
            conn.executemany(
                f"UPDATE jobs SET state = {Q}, worker = NULL, attempts = max(attempts - ?, 0)"
                f" WHERE seq = ? AND state = {R}",
                [(refund, s) for s in seqs],
            )

        await self.run(op)

    def get(self, seq: int) -> JobRecord | None:
        row = self._read(lambda c: c.execute(f"SELECT {_RECORD_COLUMNS} FROM jobs WHERE seq = ?", (seq,)).fetchone())
        return _record(row) if row else None

    async def pull(self, top: int) -> list[JobRecord]:
        """Hand out up to `top` finished, undelivered jobs, newest first, and mark them delivered."""

        def op(conn: sqlite3.Connection) -> list[JobRecord]:
            rows = conn.execute(
                # The planner would walk every finished job of the last day through jobs_finished.
                f"SELECT {_RECORD_COLUMNS} FROM jobs INDEXED BY jobs_undelivered"
                f" WHERE delivered = 0 AND state >= {DONE} ORDER BY completed_at DESC LIMIT ?",
                (top,),
            ).fetchall()
            conn.executemany("UPDATE jobs SET delivered = 1 WHERE seq = ?", [(r[0],) for r in rows])
            return [_record(r) for r in rows]

        return await self.run(op)  # durable: a result handed out must stay handed out

    async def open_jobs(self) -> list[JobRecord]:
        """Every unfinished job, oldest first."""

        def op(conn: sqlite3.Connection) -> list[JobRecord]:
            rows = conn.execute(f"SELECT {_RECORD_COLUMNS} FROM jobs WHERE state < {DONE} ORDER BY seq").fetchall()
            return [_record(r) for r in rows]

        return await self.run(op, durable=False)

    async def counts(self) -> dict[State, int]:
        """Finished jobs by state."""

        def op(conn: sqlite3.Connection) -> dict[State, int]:
            rows = conn.execute(f"SELECT state, count(*) FROM jobs WHERE state >= {DONE} GROUP BY state").fetchall()
            return {State(s): n for s, n in rows}

        return await self.run(op, durable=False)

    async def expire_results(self, older_than: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute(f"DELETE FROM jobs WHERE state >= {DONE} AND completed_at < ?", (older_than,))
            return cur.rowcount

        return await self.run(op, durable=False)


def _as_store_error(exc: BaseException) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    return StoreError(f"{type(exc).__name__}: {exc}")


def _mark_leased(seqs: Sequence[int], worker: str) -> Callable[[sqlite3.Connection], None]:
    def op(conn: sqlite3.Connection) -> None:
        conn.executemany(
            f"UPDATE jobs SET state = {R}, attempts = attempts + 1, worker = ? WHERE seq = ? AND state = {Q}",
            [(worker, s) for s in seqs],
        )

    return op


def _log_lease_record_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("recording a lease failed (the job is only queued again after a restart): %s", future.exception())


def _resolve_all(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in outcomes:
        _resolve(future, result, error)


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
