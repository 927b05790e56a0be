"""Durable job storage: the jobs, the leases issued for them, and result hand-outs, in SQLite;
the bigger job bodies in segment files beside it (server/bodies.py), written once.

Which writes are durable (fsynced before anyone is told) and which are relaxed is stated per
operation; see server/db.py for what each means. In short: an enqueue and a confirmed hand-out
survive a power loss; a lease, a result or a reservation survives a crash of the process, and
after a power loss at worst makes a job run again or a result be handed out again.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from server.bodies import Bodies
from server.body_cache import FreshBodies
from server.db import Database, StoreError, as_store_error
from server.jobs import JobRecord, Outcome, State

__all__ = ["Grant", "Store", "StoreError"]

log = logging.getLogger(__name__)

Q, R, DONE = int(State.QUEUED), int(State.RUNNING), int(State.COMPLETED)  # for SQL text
_SEGMENT_IN_USE = f"SELECT 1 FROM jobs WHERE state < {DONE} AND seg = ? LIMIT 1"  # by the jobs_open_seg index
INLINE_BODY_BYTES = 8 << 10  # bodies up to this stay in the job's row; bigger ones go to a segment

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    nonce TEXT NOT NULL,
    iterations INTEGER NOT NULL,
    size INTEGER NOT NULL,
    body BLOB,                      -- a small body, until the job finishes (big ones live in segments)
    state INTEGER NOT NULL,         -- server.jobs.State
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    enqueued_at REAL NOT NULL,
    completed_at REAL,
    result BLOB,
    error TEXT,
    delivered INTEGER NOT NULL DEFAULT 0,
    lease_id TEXT,                  -- the current lease while running
    handout TEXT,                   -- reserved by this pullCompleted hand-out until confirmed
    seg INTEGER,                    -- where the body is: segment file number ...
    off INTEGER,                    -- ... and offset in it
    delivered_at REAL               -- when pullCompleted handed the result out (confirmed)
);
CREATE TABLE IF NOT EXISTS leases (
    lease_id TEXT PRIMARY KEY,      -- every lease ever issued for a job that is still kept
    seq INTEGER NOT NULL,
    worker TEXT NOT NULL,
    started_at REAL,                -- the job's history: when it was handed out,
    ended_at REAL,                  -- when the lease ended,
    outcome TEXT                    -- and how (completed, failed, lease expired, released, ...)
);
CREATE INDEX IF NOT EXISTS leases_seq ON leases (seq);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (completed_at) WHERE state >= {DONE};
CREATE INDEX IF NOT EXISTS jobs_open ON jobs (state) WHERE state < {DONE};
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_PULLABLE = f"WHERE delivered = 0 AND handout IS NULL AND state >= {DONE}"  # matches the partial index
# Created after the migration: they name columns that older state dirs lack.
LATER_INDEXES = (
    f"CREATE INDEX IF NOT EXISTS jobs_pullable ON jobs (completed_at) {_PULLABLE}",
    f"CREATE INDEX IF NOT EXISTS jobs_open_seg ON jobs (seg) WHERE state < {DONE}",
    # confirm and unreserve find a hand-out's rows here, not by scanning a day's results
    "CREATE INDEX IF NOT EXISTS jobs_handout ON jobs (handout) WHERE handout IS NOT NULL",
)
ADDED_COLUMNS = {
    "jobs": {"lease_id": "TEXT", "handout": "TEXT", "seg": "INTEGER", "off": "INTEGER", "delivered_at": "REAL"},
    "leases": {"started_at": "REAL", "ended_at": "REAL", "outcome": "TEXT"},
}

_RECORD_COLUMNS = (
    "seq, nonce, iterations, size, state, attempts, worker, enqueued_at, completed_at, result, error, lease_id,"
    " seg, off"
)
CONFIRM_SQL = "UPDATE jobs SET delivered = 1, handout = NULL, delivered_at = ? WHERE handout = ?"
UNRESERVE_SQL = "UPDATE jobs SET handout = NULL WHERE handout = ?"
_ANY_PULLABLE = f"SELECT 1 FROM jobs INDEXED BY jobs_pullable {_PULLABLE} LIMIT 1"
_PULLABLE_RECORDS = f"SELECT {_RECORD_COLUMNS} FROM jobs INDEXED BY jobs_pullable {_PULLABLE}"


def _setup(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)
    for table, columns in ADDED_COLUMNS.items():
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for column, kind in columns.items():
            if column not in present:  # a state dir from an earlier version
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    conn.execute("DROP INDEX IF EXISTS jobs_undelivered")
    for index in LATER_INDEXES:
        conn.execute(index)
    # Reservations die with the process that made them: their results become pullable again.
    conn.execute("UPDATE jobs SET handout = NULL WHERE handout IS NOT NULL")


def _record(row: tuple[Any, ...]) -> JobRecord:
    seq, nonce, iterations, size, state, attempts, worker, enqueued_at, completed_at, result, error, lease_id = row[:12]
    seg, off = row[12:14]
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
        where=None if seg is None else (seg, off),
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
    def __init__(
        self, path: Path, *, synchronous: str = "FULL", on_commit: Callable[[int, bool, float], None] | None = None
    ) -> None:
        self.path = path
        self.bodies = Bodies(path.parent / "bodies")
        self.db = Database(
            path, synchronous=synchronous, setup=_setup, before_durable_commit=self.bodies.sync, on_commit=on_commit
        )
        self.finished: collections.Counter[State] = collections.Counter()  # kept current: /status never scans
        self.fresh = FreshBodies()

    async def start(self) -> None:
        self.bodies.open()
        await self.db.start()
        rows = self.db.read(
            lambda c: c.execute(f"SELECT state, count(*) FROM jobs WHERE state >= {DONE} GROUP BY state").fetchall()
        )
        self.finished = collections.Counter({State(s): n for s, n in rows})

    async def close(self) -> None:
        await self.db.close()
        self.bodies.close()

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
    async def insert(self, nonce: str, iterations: int, body: bytes, now: float) -> tuple[int, tuple[int, int] | None]:
        """Store a new job durably; (seq, where its body is: None when in the row).

        A body up to INLINE_BODY_BYTES goes into the row itself: one fsync covers it, where a
        segment would cost a second one. A bigger body goes to a segment, written once."""

        def op(conn: sqlite3.Connection) -> tuple[int, tuple[int, int] | None]:
            where = self.bodies.append(body) if len(body) > INLINE_BODY_BYTES else None
            cur = conn.execute(
                "INSERT INTO jobs (nonce, iterations, size, state, enqueued_at, body, seg, off)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (nonce, iterations, len(body), State.QUEUED, now, None if where else body, *(where or (None, None))),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid, where

        seq, where = await self.db.run(op, nbytes=len(body), one_statement=True)
        if where is None:
            self.fresh.keep(seq, body)
        return seq, where

    async def insert_completed(self, nonce: str, iterations: int, size: int, result: bytes, now: float) -> int:
        """Store a new job that is already done (hashed on arrival) durably, with its result and
        without its body, which nobody will read again; its seq."""

        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "INSERT INTO jobs (nonce, iterations, size, state, enqueued_at, completed_at, result)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (nonce, iterations, size, State.COMPLETED, now, now, result),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

        seq = await self.db.run(op, one_statement=True)
        self.finished[State.COMPLETED] += 1
        return seq

    def read_bodies(self, jobs: Sequence[tuple[int, int, tuple[int, int] | None]]) -> dict[int, bytes]:
        """The bodies of unfinished jobs given as (seq, size, where), by seq. A body in a segment is
        read with pread; one in its row (small, or from an earlier version) from the database,
        which only the event loop may do: call this from a thread only when every `where` is set."""
        if self.db.closed:
            raise StoreError("store is closed")
        try:
            found = {seq: self.bodies.read(*where, size) for seq, size, where in jobs if where is not None}
        except OSError as exc:
            raise as_store_error(exc) from None
        in_rows = []
        for seq, _, where in jobs:
            if where is None:
                body = self.fresh.take(seq)
                if body is None:
                    in_rows.append(seq)
                else:
                    found[seq] = body
        if in_rows:
            marks = ",".join("?" * len(in_rows))
            rows = self.db.read(
                lambda c: c.execute(
                    f"SELECT seq, body FROM jobs WHERE seq IN ({marks}) AND state < {DONE} AND body IS NOT NULL",
                    in_rows,
                ).fetchall()
            )
            found.update((seq, bytes(body)) for seq, body in rows)  # a job finished meanwhile is left out
        return found

    def record_leases(self, leases: Sequence[tuple[int, str]], worker: str) -> None:
        """Record leases (relaxed, queued without waiting): the record only matters after a
        restart, where a lease it missed means the job runs again (once more, never lost)."""
        record = self.db.queue(_record_leases(leases, worker), durable=False)
        record.add_done_callback(_log_lease_record_failure)

    def history(self, seq: int) -> list[dict[str, Any]]:
        """The leases of a job, oldest first: who held it, from when to when, and how it ended."""
        rows = self.db.read(lambda c: history_rows(c, seq))
        return [
            {"lease_id": lease_id, "worker": worker, "started_at": started, "ended_at": ended, "outcome": outcome}
            for lease_id, worker, started, ended, outcome in rows
        ]

    def delivered_at(self, seq: int) -> float | None:
        row = self.db.read(lambda c: c.execute("SELECT delivered_at FROM jobs WHERE seq = ?", (seq,)).fetchone())
        return None if row is None or row[0] is None else float(row[0])

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
        self.fresh.forget(o.seq for o in outcomes)

        def op(conn: sqlite3.Connection) -> list[tuple[int, State]]:
            done = []
            for o in outcomes:
                state = State.COMPLETED if o.result is not None else State.FAILED
                _end_leases(conn, o, state, now)
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

    async def requeue(
        self, seqs: Sequence[int], *, refund_attempt: bool = False, outcome: str = "requeued", now: float | None = None
    ) -> None:
        """Put running jobs back in the queue (durable: a requeue must not be undone); their
        current leases end with `outcome` in the job's history."""

        def op(conn: sqlite3.Connection) -> None:
            refund = 1 if refund_attempt else 0
            ended = time.time() if now is None else now
            conn.executemany(
                "UPDATE leases SET ended_at = ?, outcome = ? WHERE ended_at IS NULL AND lease_id ="
                f" (SELECT lease_id FROM jobs WHERE seq = ? AND state = {R})",
                [(ended, outcome, s) for s in seqs],
            )
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

    async def collect_bodies(self) -> int:
        """Retire (recycle or delete) the body segments no unfinished job points into any more; how
        many.

        Decided in the writer thread, among segments older than the one being appended to, which
        no new body can enter. The finishes that emptied them must be on the disk before, or a
        power loss could bring back unfinished jobs whose bodies are gone: those in this batch are,
        by its durable commit; earlier ones may be relaxed commits, which that commit does not sync
        when the batch writes nothing, so the log is synced here. One index lookup a segment, not a
        scan of the backlog: cheap enough to run every second."""

        def op(conn: sqlite3.Connection) -> list[int]:
            current = self.bodies.current
            older = [s for s in self.bodies.segments() if s < current]
            unused = [s for s in older if conn.execute(_SEGMENT_IN_USE, (s,)).fetchone() is None]
            if unused:
                self.db.sync_log()
            return unused

        unused = await self.db.run(op)
        self.bodies.retire(unused)
        return len(unused)

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
        hand-out (relaxed: a reservation lost in a crash only makes its results pullable again).
        Clients poll: when nothing is pullable, one indexed read answers, with no commit."""
        if not self.db.read(lambda c: c.execute(_ANY_PULLABLE).fetchone()):
            return []

        def op(conn: sqlite3.Connection) -> list[JobRecord]:
            rows = conn.execute(
                f"{_PULLABLE_RECORDS} ORDER BY completed_at DESC LIMIT ?",
                (top,),
            ).fetchall()
            conn.executemany("UPDATE jobs SET handout = ? WHERE seq = ?", [(handout, r[0]) for r in rows])
            return [_record(r) for r in rows]

        return await self.db.run(op, durable=False)

    async def confirm(self, handout: str) -> int:
        """The hand-out reached its client: its results are delivered (durable)."""

        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(CONFIRM_SQL, (time.time(), handout)).rowcount

        return await self.db.run(op, one_statement=True)

    async def unreserve(self, handout: str) -> int:
        """The hand-out never reached its client: its results are pullable again."""

        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(UNRESERVE_SQL, (handout,)).rowcount

        return await self.db.run(op, durable=False, one_statement=True)


def _record_leases(leases: Sequence[tuple[int, str]], worker: str) -> Callable[[sqlite3.Connection], None]:
    def op(conn: sqlite3.Connection) -> None:
        conn.executemany(
            f"UPDATE jobs SET state = {R}, attempts = attempts + 1, worker = ?, lease_id = ?"
            f" WHERE seq = ? AND state = {Q}",
            [(worker, lease_id, seq) for seq, lease_id in leases],
        )
        started = time.time()
        conn.executemany(
            "INSERT OR IGNORE INTO leases (lease_id, seq, worker, started_at) VALUES (?, ?, ?, ?)",
            [(lease_id, seq, worker, started) for seq, lease_id in leases],
        )

    return op


def _end_leases(conn: sqlite3.Connection, o: Outcome, state: State, now: float) -> None:
    """In the history: the lease a result or failure came under ends with it, and the job's
    current lease, if another one, ends as superseded."""
    outcome = "completed" if state is State.COMPLETED else f"failed: {(o.error or '')[:200]}"
    if o.lease_id is not None:
        conn.execute(
            "UPDATE leases SET ended_at = ?, outcome = ? WHERE lease_id = ? AND ended_at IS NULL",
            (now, outcome, o.lease_id),
        )
    conn.execute(
        "UPDATE leases SET ended_at = ?, outcome = ? WHERE ended_at IS NULL AND lease_id ="
        f" (SELECT lease_id FROM jobs WHERE seq = ? AND state < {DONE})",
        (now, "superseded: the job finished" if o.lease_id is not None else outcome, o.seq),
    )


def history_rows(conn: sqlite3.Connection, seq: int) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT lease_id, worker, started_at, ended_at, outcome FROM leases WHERE seq = ? ORDER BY started_at, rowid",
        (seq,),
    ).fetchall()


def _log_lease_record_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("recording a lease failed (the job is only queued again after a restart): %s", future.exception())
