"""The service: every operation of the public, worker and peer APIs, behind the HTTP handlers.

Handlers parse a request, call one method here and render what it returns. This is the one place
that admits work, formats and parses work ids, checks leases, and calls the store, the scheduler,
the worker registry and the peer. The data path reads top to bottom: `enqueue` stores a job and
queues it, `lease` hands it to a worker with its body and a lease id, `complete` records the
digest, `pull_completed` (server/handouts.py) hands the result out.

Reports name leases: every entry of complete / heartbeat / release carries the full work id
(nonce included) and a lease id issued to the reporting worker for that job. A request with any
entry that does not is refused whole (409, each bad entry listed) and changes nothing. A result
from an earlier holder of a job whose lease has since expired is still accepted while the job is
unfinished (the digest is the same whoever computes it, and only that worker could name the lease
id); failures and releases count only from the current holder.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from common.http import HttpError
from common.http import NotFound as PeerNotFound
from common.ids import WorkId
from server.config import ServerSettings
from server.errors import Conflict, NotFound, TooLarge, Unavailable
from server.events import Events
from server.handouts import Handouts, Respond
from server.health import Health
from server.peer import PeerClient
from server.peering import Peering
from server.registry import Registry
from server.scheduler import Lease, Scheduler
from server.store import Store
from server.views import work_status

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 500


class Upload(Protocol):
    """A request body: its announced length (None: not announced) and a bounded read, which gives
    the body in the pieces it came in."""

    content_length: int | None

    async def read(self, limit: int) -> list[bytes]: ...


@dataclasses.dataclass(frozen=True)
class Accepted:
    """An enqueue's answer: the job's id, and its result when it was hashed on arrival."""

    work_id: WorkId
    result: bytes | None = None


@dataclasses.dataclass(frozen=True)
class LeasedJob:
    work_id: WorkId
    lease_id: str
    iterations: int
    body: bytes


@dataclasses.dataclass(frozen=True)
class LeaseGrant:
    lease_s: float
    jobs: list[LeasedJob]
    more: bool  # jobs were still queued here after these were taken


Deliver = Callable[[LeaseGrant], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class Entry:
    """One entry of a worker's report: which job, under which lease, and what it says."""

    work_id: str
    lease_id: str
    value: Any = None  # the digest (complete), the error text (failures), nothing otherwise


class Service:
    def __init__(
        self,
        settings: ServerSettings,
        *,
        store: Store,
        scheduler: Scheduler,
        registry: Registry,
        handouts: Handouts,
        peer: PeerClient | None,
        health: Health,
        peering: Peering,
        report: Callable[[bool], Awaitable[dict[str, Any]]],
        events: Events | None = None,
    ) -> None:
        self.events = events or Events()
        self.settings = settings
        self.name = settings.server_name
        self.store = store
        self.scheduler = scheduler
        self.registry = registry
        self.handouts = handouts
        self.peer = peer
        self.health = health
        self.peering = peering
        self.report = report
        self.closing = False
        self.uploading = 0  # enqueues admitted whose bodies are still arriving
        self.waiting = 0  # clients long-polling GET /work

    # -- the public API --------------------------------------------------------------------
    async def enqueue(self, iterations: int, upload: Upload) -> Accepted:
        """Store the job durably, then queue it; or, for a job of few iterations, hash it here and
        store it finished, without its body, and answer with its result too. Either way the answer
        comes once the job is on disk."""
        started = time.perf_counter()
        limit = self.settings.max_body_bytes
        if upload.content_length is not None and upload.content_length > limit:
            raise TooLarge(f"body of {upload.content_length} bytes exceeds the limit of {limit} bytes")
        if self.closing:
            raise Unavailable("server is shutting down; use the other server", retry_after_s=1, reason="closing")
        result = None
        if self.hashed_on_arrival(iterations):  # never queued, so a full queue does not refuse it
            job, result = await self.scheduler.enqueue_done(await upload.read(limit), iterations)
        else:
            # Uploads in flight count against the queue limit, so concurrent ones cannot overshoot it.
            if len(self.scheduler.queued) + self.uploading >= self.settings.max_queued:
                raise Unavailable(
                    f"queue is full ({self.settings.max_queued} jobs waiting); retry later",
                    retry_after_s=2,
                    reason="queue_full",
                )
            self.uploading += 1
            try:
                body = b"".join(await upload.read(limit))  # one piece is not copied
                job = await self.scheduler.enqueue(body, iterations)
            finally:
                self.uploading -= 1
        self.events.enqueued(job, time.perf_counter() - started)
        if result is not None:
            self.events.finished(job, None, None, None)
        return Accepted(job.work_id(self.name), result)

    def hashed_on_arrival(self, iterations: int) -> bool:
        """Whether a job is hashed by the server that accepts it (README, hashing on arrival):
        hashing its body costs less than storing it and handing it to a worker, whatever its size,
        so only its iterations decide."""
        return iterations <= self.settings.hash_on_arrival

    async def pull_completed(self, top: int, respond: Respond) -> None:
        """Hand up to `top` finished jobs to `respond`; see server/handouts.py for the guarantee."""
        await self.handouts.pull(top, respond)

    async def work(self, work_id: str, wait_s: float, *, history: bool = False) -> dict[str, Any]:
        """A job's status from whichever server owns it; long-polls up to wait_s for it to finish.
        With `history`, also what happened to it: enqueued, each lease, finished, handed out."""
        parsed = WorkId.parse(work_id)
        if parsed is None:
            raise NotFound(f"unknown work id {work_id[:80]!r}")
        if wait_s > 0:
            if self.waiting >= self.settings.max_client_waits:
                raise Unavailable(
                    "too many clients waiting for results; retry later", retry_after_s=1, reason="too_many_waits"
                )
            self.waiting += 1
            try:
                return await self._work(parsed, work_id, wait_s, history)
            finally:
                self.waiting -= 1
        return await self._work(parsed, work_id, wait_s, history)

    async def _work(self, parsed: WorkId, work_id: str, wait_s: float, history: bool) -> dict[str, Any]:
        if parsed.server == self.name:
            return await self.own_work(work_id, wait_s, history=history)
        if self.peer is None:
            raise NotFound(f"unknown work id {work_id[:80]!r}")
        try:
            return await self.peer.get_work(str(parsed), wait_s, history=history)
        except PeerNotFound:
            raise NotFound(f"unknown work id {work_id[:80]!r}") from None
        except HttpError:
            raise Unavailable(
                f"the server owning {work_id} is unreachable; retry later", retry_after_s=5, reason="peer_unreachable"
            ) from None

    async def own_work(self, work_id: str, wait_s: float, *, history: bool = False) -> dict[str, Any]:
        """The status of one of this server's jobs (also what the peer asks for)."""
        parsed = self._own(work_id)
        if parsed is None:
            raise NotFound(f"unknown work id {work_id[:80]!r}")
        # The nonce is checked before any wait: a made-up id gets its 404 at once. A job the
        # scheduler does not hold is finished (or unknown): its record, read once, answers.
        nonce = self.scheduler.nonce(parsed.seq)
        record = None if nonce is not None else self.store.get(parsed.seq)
        if (nonce if record is None else record.nonce) != parsed.nonce:
            raise NotFound(f"unknown work id {work_id[:80]!r}")
        if record is None or not record.state.finished:
            if wait_s > 0:
                await self.scheduler.wait_finished(parsed.seq, wait_s)
            record = self.store.get(parsed.seq)
        if record is None or record.nonce != parsed.nonce:
            raise NotFound(f"unknown work id {work_id[:80]!r}")
        status = work_status(self.name, record)
        if not record.state.finished:  # the scheduler knows before the relaxed lease record lands
            lease = self.scheduler.current(parsed.seq)
            job = lease.job if lease is not None else self.scheduler.queued.get(parsed.seq)
            if job is not None:
                status["status"] = "running" if lease is not None else "queued"
                status["attempts"] = job.attempts
        if history:
            status["history"] = {
                "enqueued_at": record.enqueued_at,
                "leases": self.store.history(parsed.seq),
                "finished_at": record.completed_at,
                "handed_out_at": self.store.delivered_at(parsed.seq),
            }
        return status

    def health_report(self) -> dict[str, Any]:
        if self.closing:
            raise Unavailable("shutting down", reason="closing")
        report: dict[str, Any] = {"ok": not self.health.degraded, "server": self.name}
        if self.health.degraded:
            report["status"] = "degraded"
            report["problems"] = self.health.problems()
        return report

    # -- the worker API --------------------------------------------------------------------
    async def lease(self, worker: str, max_jobs: int, wait_s: float, deliver: Deliver) -> None:
        """Hand up to max_jobs to the worker through `deliver`; what it fails to deliver goes back."""
        self.registry.touch(worker)
        handed = await self.scheduler.lease(worker, min(max_jobs, self.settings.lease_batch_max), wait_s)
        jobs = [LeasedJob(lease.job.work_id(self.name), lease.lease_id, lease.job.iterations, b) for lease, b in handed]
        try:
            await deliver(LeaseGrant(self.settings.lease_s, jobs, more=bool(self.scheduler.queued)))
        except (ConnectionError, asyncio.CancelledError):
            # The worker never got these jobs: put them back now instead of when the lease expires.
            if handed:
                await asyncio.shield(self.scheduler.release([lease for lease, _ in handed]))
            raise

    def _own(self, work_id: object) -> WorkId | None:
        """The parsed id when it names a job of this server."""
        parsed = WorkId.parse(work_id) if isinstance(work_id, str) else None
        return parsed if parsed is not None and parsed.server == self.name else None

    def _nonce(self, seq: int) -> str | None:
        nonce = self.scheduler.nonce(seq)
        if nonce is None and (record := self.store.get(seq)) is not None:
            nonce = record.nonce
        return nonce

    def _check(self, worker: str, entries: Sequence[Entry]) -> list[tuple[int, Lease | None]]:
        """For each entry its job's seq and the current lease it names (None: an earlier one of
        this worker's). Raises Conflict listing every entry that names no lease of this worker
        for that job."""
        found: list[tuple[int, Lease | None]] = []
        rejected = []
        for entry in entries:
            parsed = self._own(entry.work_id)
            grant = self.scheduler.grant(entry.lease_id) if isinstance(entry.lease_id, str) else None
            reason = None
            if parsed is None:
                reason = f"not a work id of server {self.name}"
            elif grant is None or grant.seq != parsed.seq:
                reason = "no such lease for this job"
            elif grant.worker != worker:
                reason = "lease issued to another worker"
            elif self._nonce(parsed.seq) != parsed.nonce:
                reason = "unknown job"
            if reason is not None:
                rejected.append({"work_id": str(entry.work_id)[:80], "reason": reason})
                continue
            assert parsed is not None
            lease = self.scheduler.current(parsed.seq)
            found.append((parsed.seq, lease if lease is not None and lease.lease_id == entry.lease_id else None))
        if rejected:
            raise Conflict(
                f"{len(rejected)} of {len(entries)} entries name no lease of worker {worker}; nothing was done",
                details={"rejected": rejected},
            )
        return found

    async def complete(
        self, worker: str, results: Sequence[Entry], failures: Sequence[Entry], stats: object
    ) -> dict[str, int]:
        """Record results (first wins; late ones of an earlier lease too) and failed attempts."""
        checked = self._check(worker, [*results, *failures])
        self.registry.touch(worker, stats)
        done = [(seq, e.value, e.lease_id) for (seq, _), e in zip(checked[: len(results)], results, strict=True)]
        current = [lease for _, lease in checked[len(results) :]]
        accepted = await self.scheduler.complete(worker, done) if done else 0
        self.registry.credit(worker, accepted)
        failed = [(lease, str(e.value)[:MAX_ERROR_CHARS]) for lease, e in zip(current, failures, strict=True) if lease]
        if failed:
            await self.scheduler.fail_attempt(failed)
        return {"accepted": accepted, "duplicates": len(done) - accepted}

    def heartbeat(self, worker: str, leases: Sequence[Entry], stats: object) -> dict[str, Any]:
        """Extend the worker's current leases; answers the leases (work id, lease id) it no longer holds."""
        current = [lease for _, lease in self._check(worker, leases)]
        self.registry.touch(worker, stats)
        self.scheduler.extend([lease for lease in current if lease is not None])
        lost = [
            {"work_id": e.work_id, "lease_id": e.lease_id}
            for lease, e in zip(current, leases, strict=True)
            if not lease
        ]
        return {"lost": lost, "lease_s": self.settings.lease_s}

    async def release(self, worker: str, leases: Sequence[Entry], stats: object) -> dict[str, int]:
        """Take back jobs a draining worker has not started (no attempt counted)."""
        current = [lease for _, lease in self._check(worker, leases)]
        self.registry.touch(worker, stats)
        released = await self.scheduler.release([lease for lease in current if lease is not None])
        return {"released": released}

    # -- the peer API ----------------------------------------------------------------------
    async def peer_reserve(self, top: int) -> dict[str, Any]:
        """The peer's pullCompleted asks for this server's own results (reserved until confirmed)."""
        return await self.handouts.reserve_for_peer(top)

    async def peer_confirm(self, handout: str) -> dict[str, int]:
        return {"confirmed": await self.handouts.confirm_for_peer(handout)}

    async def sync_loans(self, want: int, in_use: int, revoked: list[str]) -> dict[str, Any]:
        """Lender side of the quota loans (the total the peer may use from now on), and the
        workers each side has reaped, whose credentials both must refuse."""
        return await self.peering.sync(want, in_use, revoked)

    async def status(self, *, detail: bool) -> dict[str, Any]:
        return await self.report(detail)
