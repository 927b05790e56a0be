"""Durable job storage: one SQLite file (WAL), one writer thread, group commits.

Every operation is a function of the connection. The writer thread takes all operations that
are waiting, runs each inside a savepoint of one transaction, commits once, and only then
resolves their futures: an acknowledged operation is on disk, and one fsync serves a whole
batch, so durability does not cost throughput.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

log = logging.getLogger(__name__)

QUEUED, RUNNING, COMPLETED, FAILED = 0, 1, 2, 3
STATE_NAMES = {QUEUED: "queued", RUNNING: "running", COMPLETED: "completed", FAILED: "failed"}
MAX_BATCH = 2000
SMALL_LEASE_JOBS, SMALL_LEASE_BYTES = 4, 256 << 10  # read on the event loop up to this

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    nonce TEXT NOT NULL,
    iterations INTEGER NOT NULL,
    size INTEGER NOT NULL,
    body BLOB,                      -- dropped once the job is finished
    state INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    enqueued_at REAL NOT NULL,
    completed_at REAL,
    result BLOB,
    error TEXT,
    delivered INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_undelivered ON jobs (completed_at) WHERE delivered = 0 AND state >= 2;
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (completed_at) WHERE state >= 2;
CREATE INDEX IF NOT EXISTS jobs_open ON jobs (state) WHERE state < 2;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class StoreError(Exception):
    """The database could not store or read (disk full, I/O error, closed)."""


@dataclasses.dataclass(frozen=True)
class JobRow:
    seq: int
    nonce: str
    iterations: int
    size: int
    state: int
    attempts: int
    worker: str | None
    enqueued_at: float
    completed_at: float | None
    result: bytes | None
    error: str | None


_ROW_COLUMNS = "seq, nonce, iterations, size, state, attempts, worker, enqueued_at, completed_at, result, error"


class Store:
    def __init__(self, path: Path, *, synchronous: str = "FULL") -> None:
        self.path = path
        self.synchronous = synchronous.upper()
        self._ops: queue.SimpleQueue = queue.SimpleQueue()
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

    def _run_batch(self, conn: sqlite3.Connection, batch: list) -> None:
        outcomes: list[tuple[asyncio.Future, Any, BaseException | None]] = []
        sync = self.synchronous if any(durable for _, _, durable in batch) else self._relaxed
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
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            error = _as_store_error(exc)
            outcomes = [(future, None, error) for _, future, _ in batch]
        # One wake-up of the event loop per group commit, not one per operation.
        self._loop.call_soon_threadsafe(_resolve_all, outcomes)

    async def run(self, fn: Callable[[sqlite3.Connection], Any], *, durable: bool = True) -> Any:
        """Run fn(conn) in the next group commit; returns once it is committed (and, when
        durable, synced to disk)."""
        return await self._queue(fn, durable=durable)

    def _queue(self, fn: Callable[[sqlite3.Connection], Any], *, durable: bool) -> asyncio.Future:
        """Queue fn(conn) for the next group commit; the future resolves once it is committed.
        Operations commit in the order they are queued."""
        if self._closed or self._thread is None:
            raise StoreError("store is closed")
        future = self._loop.create_future()
        self._ops.put((fn, future, durable))
        return future

    def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
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
            return row[0]
        stored = await self.run(op)
        if stored != name:
            raise StoreError(f"state dir belongs to server {stored!r}, not {name!r}")

    async def insert(self, nonce: str, iterations: int, body: bytes, now: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "INSERT INTO jobs (nonce, iterations, size, body, state, enqueued_at) VALUES (?, ?, ?, ?, 0, ?)",
                (nonce, iterations, len(body), body, now))
            return cur.lastrowid
        return await self.run(op)

    async def lease(self, seqs: Sequence[int], worker: str, nbytes: int) -> list[tuple[int, bytes, str]]:
        """Mark jobs running for a worker, count the attempt; (seq, body, nonce) of each (gone: skipped).

        A small lease (the latency case) is read on the event loop and its record queued without
        waiting: the record only matters after a restart, where a job it missed is queued again
        instead of running. Big leases (megabytes of bodies) go through the writer thread."""
        if len(seqs) <= SMALL_LEASE_JOBS and nbytes <= SMALL_LEASE_BYTES:
            marks = ",".join("?" * len(seqs))
            rows = self._read(lambda c: c.execute(
                f"SELECT seq, body, nonce FROM jobs WHERE seq IN ({marks}) AND state < 2", list(seqs)).fetchall())
            record = self._queue(_mark_leased([seq for seq, _, _ in rows], worker), durable=False)
            record.add_done_callback(_log_lease_record_failure)
            return [(seq, bytes(body), nonce) for seq, body, nonce in rows]

        def op(conn: sqlite3.Connection) -> list[tuple[int, bytes, str]]:
            _mark_leased(seqs, worker)(conn)
            bodies = []
            for seq in seqs:
                row = conn.execute("SELECT body, nonce FROM jobs WHERE seq = ? AND state = 1", (seq,)).fetchone()
                if row is not None:
                    bodies.append((seq, bytes(row[0]), row[1]))
            return bodies
        return await self.run(op, durable=False)

    async def finish(self, outcomes: Iterable[tuple[int, bytes | None, str | None]], worker: str | None,
                     now: float) -> list[int]:
        """Record results (state completed) or errors (state failed); first result wins.

        Returns the seqs that were finished by this call (the others were finished already).
        """
        outcomes = list(outcomes)

        def op(conn: sqlite3.Connection) -> list[int]:
            done = []
            for seq, result, error in outcomes:
                cur = conn.execute(
                    "UPDATE jobs SET state = ?, result = ?, error = ?, completed_at = ?, body = NULL,"
                    " worker = coalesce(?, worker) WHERE seq = ? AND state < 2",
                    (COMPLETED if result is not None else FAILED, result, error, now, worker, seq))
                if cur.rowcount:
                    done.append(seq)
            return done
        return await self.run(op, durable=False)

    async def requeue(self, seqs: Sequence[int], *, refund_attempt: bool = False) -> None:
        def op(conn: sqlite3.Connection) -> None:
            refund = 1 if refund_attempt else 0
            conn.executemany("UPDATE jobs SET state = 0, worker = NULL, attempts = max(attempts - ?, 0)"
                             " WHERE seq = ? AND state = 1", [(refund, s) for s in seqs])
        await self.run(op)

    def get(self, seq: int) -> JobRow | None:
        row = self._read(lambda c: c.execute(f"SELECT {_ROW_COLUMNS} FROM jobs WHERE seq = ?", (seq,)).fetchone())
        return _job_row(row) if row else None

    async def pull(self, top: int) -> list[JobRow]:
        """Hand out up to `top` finished, undelivered jobs, newest first, and mark them delivered."""
        def op(conn: sqlite3.Connection) -> list[JobRow]:
            rows = conn.execute(
                # The planner would walk every finished job of the last day through jobs_finished.
                f"SELECT {_ROW_COLUMNS} FROM jobs INDEXED BY jobs_undelivered WHERE delivered = 0 AND state >= 2"
                " ORDER BY completed_at DESC LIMIT ?", (top,)).fetchall()
            conn.executemany("UPDATE jobs SET delivered = 1 WHERE seq = ?", [(r[0],) for r in rows])
            return [_job_row(r) for r in rows]
        return await self.run(op)  # durable: a result handed out must stay handed out

    async def open_jobs(self) -> list[tuple[int, int, int, float, int, int]]:
        """(seq, iterations, size, enqueued_at, state, attempts) of every unfinished job, oldest first."""
        def op(conn: sqlite3.Connection) -> list:
            return conn.execute("SELECT seq, iterations, size, enqueued_at, state, attempts FROM jobs"
                                " WHERE state < 2 ORDER BY seq").fetchall()
        return await self.run(op, durable=False)

    async def counts(self) -> dict[str, int]:
        def op(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute("SELECT state, count(*) FROM jobs WHERE state >= 2 GROUP BY state").fetchall()
            return {STATE_NAMES[s]: n for s, n in rows}
        return await self.run(op, durable=False)

    async def expire_results(self, older_than: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM jobs WHERE state >= 2 AND completed_at < ?", (older_than,)).rowcount
        return await self.run(op, durable=False)


def _job_row(row: tuple) -> JobRow:
    values = list(row)
    if values[9] is not None:
        values[9] = bytes(values[9])
    return JobRow(*values)


def _as_store_error(exc: BaseException) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    return StoreError(f"{type(exc).__name__}: {exc}")


def _mark_leased(seqs: Sequence[int], worker: str) -> Callable[[sqlite3.Connection], None]:
    def op(conn: sqlite3.Connection) -> None:
        conn.executemany("UPDATE jobs SET state = 1, attempts = attempts + 1, worker = ? WHERE seq = ? AND state = 0",
                         [(worker, s) for s in seqs])
    return op


def _log_lease_record_failure(future: asyncio.Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("recording a lease failed (the job is only queued again after a restart): %s",
                    future.exception())


def _resolve_all(outcomes: list) -> None:
    for future, result, error in outcomes:
        _resolve(future, result, error)


def _resolve(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def now() -> float:
    return time.time()
