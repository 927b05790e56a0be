"""Durable job storage: the jobs, the leases issued for them, and result hand-outs, in SQLite.

Which writes are durable (fsynced before anyone is told) and which are relaxed is stated per
operation; see server/db.py for what each means. In short: an enqueue and a confirmed hand-out
survive a power loss; a lease, a result or a reservation survives a crash of the process, and
after a power loss at worst makes a job run again or a result be handed out again.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from server.db import Database, StoreError
from server.jobs import JobRecord, Outcome, State

__all__ = ["Grant", "Store", "StoreError"]

log = logging.getLogger(__name__)

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
    delivered INTEGER NOT NULL DEFAULT 0,
    lease_id TEXT,                  -- the current lease while running
    handout TEXT                    -- reserved by this pullCompleted hand-out until confirmed
);
CREATE TABLE IF NOT EXISTS leases (
    lease_id TEXT PRIMARY KEY,      -- every lease ever issued for a job that is still kept
    seq INTEGER NOT NULL,
    worker TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_seq ON leases (seq);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (completed_at) WHERE state >= {DONE};
CREATE INDEX IF NOT EXISTS jobs_open ON jobs (state) WHERE state < {DONE};
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# Created after the migration: it names columns that older state dirs lack.
PULLABLE_INDEX = (
    "CREATE INDEX IF NOT EXISTS jobs_pullable ON jobs (completed_at)"
    f" WHERE delivered = 0 AND handout IS NULL AND state >= {DONE}"
)
ADDED_COLUMNS = {"lease_id": "TEXT", "handout": "TEXT"}

_RECORD_COLUMNS = (
    "seq, nonce, iterations, size, state, attempts, worker, enqueued_at, completed_at, result, error, lease_id"
)


def _setup(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)
    present = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    for column, kind in ADDED_COLUMNS.items():
        if column not in present:  # a state dir from an earlier version
            conn.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
    conn.execute("DROP INDEX IF EXISTS jobs_undelivered")
    conn.execute(PULLABLE_INDEX)
    # Reservations die with the process that made them: their results become pullable again.
    conn.execute("UPDATE jobs SET handout = NULL WHERE handout IS NOT NULL")


def _record(row: tuple[Any, ...]) -> JobRecord:
    seq, nonce, iterations, size, state, attempts, worker, enqueued_at, completed_at, result, error, lease_id = row
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
        lease_id=lease_id,
    )


class Grant(tuple[int, str]):
    """Who a lease id was issued to: (seq, worker)."""

    @property
    def seq(self) -> int:
        return self[0]

    @property
    def worker(self) -> str:
        return self[1]


class Store:
    def __init__(self, path: Path, *, synchronous: str = "FULL") -> None:
        self.path = path
        self.db = Database(path, synchronous=synchronous, setup=_setup)
        self.finished: collections.Counter[State] = collections.Counter()  # kept current: /status never scans

    async def start(self) -> None:
        await self.db.start()
        rows = self.db.read(
            lambda c: c.execute(f"SELECT state, count(*) FROM jobs WHERE state >= {DONE} GROUP BY state").fetchall()
        )
        self.finished = collections.Counter({State(s): n for s, n in rows})

    async def close(self) -> None:
        await self.db.close()

    # -- identity --------------------------------------------------------------------------
    async def check_identity(self, name: str) -> None:
        """Refuse a state dir that belongs to a server of another name (its ids would lie)."""

        def op(conn: sqlite3.Connection) -> str:
            row = conn.execute("SELECT value FROM meta WHERE key = 'server_name'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta (key, value) VALUES ('server_name', ?)", (name,))
                return name
            return str(row[0])

        stored = await self.db.run(op)
        if stored != name:
            raise StoreError(f"state dir belongs to server {stored!r}, not {name!r}")

    async def get_meta(self, key: str) -> str | None:
        row = self.db.read(lambda c: c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone())
        return None if row is None else str(row[0])

    async def set_meta(self, key: str, value: str, *, durable: bool = False) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

        await self.db.run(op, durable=durable)

    # -- jobs ------------------------------------------------------------------------------
    async def insert(self, nonce: str, iterations: int, body: bytes, now: float) -> int:
        """Store a new job durably; its seq."""

        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "INSERT INTO jobs (nonce, iterations, size, body, state, enqueued_at) VALUES (?, ?, ?, ?, ?, ?)",
                (nonce, iterations, len(body), body, State.QUEUED, now),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

        return await self.db.run(op, nbytes=len(body))

    def lease(self, leases: Sequence[tuple[int, str]], worker: str) -> dict[int, bytes]:
        """Bodies of the still unfinished jobs among (seq, lease id), by seq; records the leases.

        The bodies are read from what is committed, on the calling thread; the record is queued
        without waiting (relaxed): it only matters after a restart, where a lease it missed means
        the job runs again (computed once more, never lost)."""
        seqs = [seq for seq, _ in leases]
        marks = ",".join("?" * len(seqs))
        rows = self.db.read(
            lambda c: c.execute(
                f"SELECT seq, body FROM jobs WHERE seq IN ({marks}) AND state < {DONE}", seqs
            ).fetchall()
        )
        bodies = {seq: bytes(body) for seq, body in rows}
        record = self.db.queue(_record_leases([lease for lease in leases if lease[0] in bodies], worker), durable=False)
        record.add_done_callback(_log_lease_record_failure)
        return bodies

    def grant(self, lease_id: str) -> Grant | None:
        """Who the lease id was issued to, for jobs whose records are still kept."""
        row = self.db.read(
            lambda c: c.execute("SELECT seq, worker FROM leases WHERE lease_id = ?", (lease_id,)).fetchone()
        )
        return None if row is None else Grant((row[0], row[1]))

    async def finish(self, outcomes: Iterable[Outcome], worker: str | None, now: float) -> list[int]:
        """Record results (completed) or errors (failed), relaxed; the first outcome of a job wins.

        Returns the seqs that were finished by this call (the others were finished already)."""
        outcomes = list(outcomes)

        def op(conn: sqlite3.Connection) -> list[tuple[int, State]]:
            done = []
            for o in outcomes:
                state = State.COMPLETED if o.result is not None else State.FAILED
                cur = conn.execute(
                    "UPDATE jobs SET state = ?, result = ?, error = ?, completed_at = ?, body = NULL, lease_id = NULL,"
                    f" worker = coalesce(?, worker) WHERE seq = ? AND state < {DONE}",
                    (state, o.result, o.error, now, worker, o.seq),
                )
                if cur.rowcount:
                    done.append((o.seq, state))
            return done

        done = await self.db.run(op, durable=False)
        self.finished.update(state for _, state in done)
        return [seq for seq, _ in done]

    async def requeue(self, seqs: Sequence[int], *, refund_attempt: bool = False) -> None:
        """Put running jobs back in the queue (durable: a requeue must not be undone)."""

        def op(conn: sqlite3.Connection) -> None:
            refund = 1 if refund_attempt else 0
            conn.executemany(
                f"UPDATE jobs SET state = {Q}, worker = NULL, lease_id = NULL, attempts = max(attempts - ?, 0)"
                f" WHERE seq = ? AND state = {R}",
                [(refund, s) for s in seqs],
            )

        await self.db.run(op)

    def get(self, seq: int) -> JobRecord | None:
        row = self.db.read(lambda c: c.execute(f"SELECT {_RECORD_COLUMNS} FROM jobs WHERE seq = ?", (seq,)).fetchone())
        return _record(row) if row else None

    async def open_jobs(self) -> tuple[list[JobRecord], list[tuple[str, Grant]]]:
        """Every unfinished job, oldest first, and the leases issued for them."""

        def op(conn: sqlite3.Connection) -> tuple[list[JobRecord], list[tuple[str, Grant]]]:
            rows = conn.execute(f"SELECT {_RECORD_COLUMNS} FROM jobs WHERE state < {DONE} ORDER BY seq").fetchall()
            grants = conn.execute(
                f"SELECT l.lease_id, l.seq, l.worker FROM leases l JOIN jobs j ON j.seq = l.seq WHERE j.state < {DONE}"
            ).fetchall()
            return [_record(r) for r in rows], [(g[0], Grant((g[1], g[2]))) for g in grants]

        return await self.db.run(op, durable=False)

    def counts(self) -> dict[State, int]:
        """Finished jobs kept, by state (maintained, not counted)."""
        return dict(self.finished)

    async def expire_results(self, older_than: float) -> int:
        """Drop finished jobs (and their lease records) completed before `older_than`."""

        def op(conn: sqlite3.Connection) -> dict[State, int]:
            where = f"state >= {DONE} AND completed_at < ?"
            conn.execute(f"DELETE FROM leases WHERE seq IN (SELECT seq FROM jobs WHERE {where})", (older_than,))
            gone = conn.execute(f"SELECT state, count(*) FROM jobs WHERE {where} GROUP BY state", (older_than,))
            counts = {State(s): n for s, n in gone.fetchall()}
            conn.execute(f"DELETE FROM jobs WHERE {where}", (older_than,))
            return counts

        removed = await self.db.run(op, durable=False)
        self.finished.subtract(removed)
        return sum(removed.values())

    # -- pullCompleted hand-outs -----------------------------------------------------------
    async def reserve(self, top: int, handout: str) -> list[JobRecord]:
        """Up to `top` finished jobs nobody has been handed, newest first, reserved for the
        hand-out (relaxed: a reservation lost in a crash only makes its results pullable again)."""

        def op(conn: sqlite3.Connection) -> list[JobRecord]:
            rows = conn.execute(
                f"SELECT {_RECORD_COLUMNS} FROM jobs INDEXED BY jobs_pullable"
                f" WHERE delivered = 0 AND handout IS NULL AND state >= {DONE} ORDER BY completed_at DESC LIMIT ?",
                (top,),
            ).fetchall()
            conn.executemany("UPDATE jobs SET handout = ? WHERE seq = ?", [(handout, r[0]) for r in rows])
            return [_record(r) for r in rows]

        return await self.db.run(op, durable=False)

    async def confirm(self, handout: str) -> int:
        """The hand-out reached its client: its results are delivered (durable)."""

        def op(conn: sqlite3.Connection) -> int:
            return conn.execute("UPDATE jobs SET delivered = 1, handout = NULL WHERE handout = ?", (handout,)).rowcount

        return await self.db.run(op)

    async def unreserve(self, handout: str) -> int:
        """The hand-out never reached its client: its results are pullable again."""

        def op(conn: sqlite3.Connection) -> int:
            return conn.execute("UPDATE jobs SET handout = NULL WHERE handout = ?", (handout,)).rowcount

        return await self.db.run(op, durable=False)


def _record_leases(leases: Sequence[tuple[int, str]], worker: str) -> Callable[[sqlite3.Connection], None]:
    def op(conn: sqlite3.Connection) -> None:
        conn.executemany(
            f"UPDATE jobs SET state = {R}, attempts = attempts + 1, worker = ?, lease_id = ?"
            f" WHERE seq = ? AND state = {Q}",
            [(worker, lease_id, seq) for seq, lease_id in leases],
        )
        conn.executemany(
            "INSERT OR IGNORE INTO leases (lease_id, seq, worker) VALUES (?, ?, ?)",
            [(lease_id, seq, worker) for seq, lease_id in leases],
        )

    return op


def _log_lease_record_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("recording a lease failed (the job is only queued again after a restart): %s", future.exception())
