"""The service: every operation of the public, worker and peer APIs, behind the HTTP handlers.

Handlers parse a request, call one method here and render what it returns. This is the one place
that admits work, formats and parses work ids, and calls the store, the scheduler, the worker
registry and the peer. The data path reads top to bottom: `enqueue` stores a job and queues it,
`lease` hands it to a worker with its body, `complete` records the digest, `pull_completed`
hands the result out once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from common.http import HttpError
from common.http import NotFound as PeerNotFound
from common.ids import WorkId
from server.config import ServerSettings
from server.errors import BadRequest, NotFound, TooLarge, Unavailable
from server.jobs import State
from server.launchers.base import Launcher
from server.loans import Loans
from server.peer import PeerClient
from server.registry import Registry
from server.scaling.guard import LaunchGuard
from server.scheduler import Scheduler
from server.store import Store
from server.views import finished_item, work_status

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 500


class Upload(Protocol):
    """A request body: its announced length (None: not announced) and a bounded read."""

    content_length: int | None

    async def read(self, limit: int) -> bytes: ...


class Fleet(Protocol):
    """What the service needs of the autoscaler: the fleet size it wants and has, and its state."""

    wanted: int

    def fleet_size(self) -> int: ...

    def status(self) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class LeasedJob:
    work_id: WorkId
    iterations: int
    body: bytes


@dataclasses.dataclass(frozen=True)
class LeaseGrant:
    lease_s: float
    jobs: list[LeasedJob]


Deliver = Callable[[LeaseGrant], Awaitable[None]]


class Service:
    def __init__(
        self,
        settings: ServerSettings,
        *,
        store: Store,
        scheduler: Scheduler,
        registry: Registry,
        loans: Loans,
        peer: PeerClient | None,
        fleet: Fleet | None = None,
        launcher: Launcher | None = None,
        guard: LaunchGuard | None = None,
    ) -> None:
        self.settings = settings
        self.name = settings.server_name
        self.store = store
        self.scheduler = scheduler
        self.registry = registry
        self.loans = loans
        self.peer = peer
        self.fleet = fleet
        self.launcher = launcher
        self.guard = guard
        self.closing = False

    # -- work ids --------------------------------------------------------------------------
    def _own(self, work_id: object) -> WorkId | None:
        """The parsed id when it names a job of this server."""
        parsed = WorkId.parse(work_id) if isinstance(work_id, str) else None
        return parsed if parsed is not None and parsed.server == self.name else None

    def _own_seqs(self, work_ids: object) -> dict[int, str]:
        """seq -> work id for the ids in the list that belong to this server (others are ignored)."""
        if not isinstance(work_ids, list):
            raise BadRequest("work_ids must be a list")
        return {parsed.seq: str(parsed) for w in work_ids if (parsed := self._own(w)) is not None}

    # -- the public API --------------------------------------------------------------------
    async def enqueue(self, iterations: int, upload: Upload) -> WorkId:
        """Store the job durably, then queue it; the id is returned once it is on disk."""
        limit = self.settings.max_body_bytes
        if upload.content_length is not None and upload.content_length > limit:
            raise TooLarge(f"body of {upload.content_length} bytes exceeds the limit of {limit} bytes")
        if len(self.scheduler.queued) >= self.settings.max_queued:
            raise Unavailable(f"queue is full ({self.settings.max_queued} jobs waiting); retry later", retry_after_s=2)
        if self.closing:
            raise Unavailable("server is shutting down; use the other server", retry_after_s=1)
        body = await upload.read(limit)
        job = await self.scheduler.enqueue(body, iterations)
        return job.work_id(self.name)

    async def pull_completed(self, top: int) -> list[dict[str, Any]]:
        """Up to `top` finished jobs, newest first, each handed out once: own ones, then the peer's."""
        items = await self.peer_pull(top)
        if len(items) < top and self.peer is not None:
            with contextlib.suppress(HttpError):  # a peer that is down is skipped: its results wait for it
                items += await self.peer.pull(top - len(items))
        items.sort(key=lambda item: item["completed_at"] or 0.0, reverse=True)
        return items

    async def work(self, work_id: str, wait_s: float) -> dict[str, Any]:
        """A job's status from whichever server owns it; long-polls up to wait_s for it to finish."""
        parsed = WorkId.parse(work_id)
        if parsed is None:
            raise NotFound(f"unknown work id {work_id[:80]!r}")
        if parsed.server == self.name:
            return await self.peer_work(work_id, wait_s)
        if self.peer is None:
            raise NotFound(f"unknown work id {work_id[:80]!r}")
        try:
            return await self.peer.get_work(str(parsed), wait_s)
        except PeerNotFound:
            raise NotFound(f"unknown work id {work_id[:80]!r}") from None
        except HttpError:
            raise Unavailable(f"the server owning {work_id} is unreachable; retry later", retry_after_s=5) from None

    def health(self) -> dict[str, Any]:
        if self.closing:
            raise Unavailable("shutting down")
        return {"ok": True, "server": self.name}

    # -- the worker API --------------------------------------------------------------------
    async def lease(self, worker: str, max_jobs: int, wait_s: float, deliver: Deliver) -> None:
        """Hand up to max_jobs to the worker through `deliver`; what it fails to deliver goes back."""
        self.registry.touch(worker)
        # A worker may ask for more than this server hands out at once; it gets the server's maximum.
        handed = await self.scheduler.lease(worker, min(max_jobs, self.settings.lease_batch_max), wait_s)
        grant = LeaseGrant(
            self.settings.lease_s, [LeasedJob(job.work_id(self.name), job.iterations, body) for job, body in handed]
        )
        try:
            await deliver(grant)
        except (ConnectionError, asyncio.CancelledError):
            # The worker never got these jobs: put them back now instead of when the lease expires.
            if handed:
                await asyncio.shield(self.scheduler.release(worker, [job.seq for job, _ in handed]))
            raise

    async def complete(
        self, worker: str, results: Sequence[tuple[str, bytes]], failures: Sequence[tuple[str, str]], stats: object
    ) -> dict[str, int]:
        """Record results (first wins) and failed attempts of this server's jobs."""
        info = self.registry.touch(worker, stats)
        done = [(p.seq, digest) for work_id, digest in results if (p := self._own(work_id)) is not None]
        failed = [
            (p.seq, error[:MAX_ERROR_CHARS]) for work_id, error in failures if (p := self._own(work_id)) is not None
        ]
        accepted = await self.scheduler.complete(info.worker_id, done) if done else 0
        if failed:
            await self.scheduler.fail_attempt(info.worker_id, failed)
        return {"accepted": accepted, "duplicates": len(done) - accepted}

    def heartbeat(self, worker: str, work_ids: object, stats: object) -> dict[str, Any]:
        """Extend the worker's leases; answers the ids it no longer holds."""
        self.registry.touch(worker, stats)
        held = self._own_seqs(work_ids)
        lost = self.scheduler.heartbeat(worker, list(held))
        return {"lost": [held[seq] for seq in lost], "lease_s": self.settings.lease_s}

    async def release(self, worker: str, work_ids: object, stats: object) -> dict[str, int]:
        """Take back jobs a draining worker has not started (no attempt counted)."""
        self.registry.touch(worker, stats)
        released = await self.scheduler.release(worker, list(self._own_seqs(work_ids)))
        return {"released": released}

    # -- the peer API ----------------------------------------------------------------------
    async def peer_pull(self, top: int) -> list[dict[str, Any]]:
        """This server's own undelivered results (it does not ask its peer: no ping-pong)."""
        return [finished_item(self.name, record) for record in await self.store.pull(top)]

    async def peer_work(self, work_id: str, wait_s: float) -> dict[str, Any]:
        parsed = self._own(work_id)
        if parsed is None:
            raise NotFound(f"unknown work id {work_id[:80]!r}")
        if wait_s > 0:
            await self.scheduler.wait_finished(parsed.seq, wait_s)
        record = self.store.get(parsed.seq)
        if record is None or record.nonce != parsed.nonce:
            raise NotFound(f"unknown work id {work_id[:80]!r}")
        return work_status(self.name, record)

    def sync_loans(self, want: int, in_use: int) -> dict[str, Any]:
        """Lender side of the quota loans: the total the peer may use from now on."""
        own_have = self.fleet.fleet_size() if self.fleet else 0
        own_wanted = self.fleet.wanted if self.fleet else 0
        granted = self.loans.grant(want, in_use, own_have=own_have, own_wanted=own_wanted)
        return {"name": self.name, "granted": granted, "queued": len(self.scheduler.queued)}

    # -- what operators see ----------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        counts = await self.store.counts()
        no_fleet = {"live": 0, "starting": 0, "max": 0, "allowed": 0}
        peer = None
        if self.peer:
            peer = {
                "url": self.peer.url,
                "name": self.peer.name,
                "reachable": self.peer.reachable(),
                "error": self.peer.last_error,
            }
        launcher: dict[str, Any] = {"kind": "none"}
        if self.launcher:
            launcher = {**self.launcher.status(), **({"guard": self.guard.status()} if self.guard else {})}
        return {
            "server": self.name,
            "url": self.settings.url,
            "queued": len(self.scheduler.queued),
            "running": len(self.scheduler.leases),
            "completed": counts.get(State.COMPLETED, 0),
            "failed": counts.get(State.FAILED, 0),
            "oldest_queued_age_s": round(self.scheduler.oldest_wait_s(), 3),
            "backlog_cost": self.scheduler.backlog_cost,
            "jobs_per_s": self.scheduler.jobs_per_s(),
            "workers": self.fleet.status() if self.fleet else no_fleet,
            "workers_reporting": len(self.registry.seen_within(self.settings.worker_dead_s)),
            "loans": {"borrowed": self.loans.borrowed, "lent": self.loans.lent},
            "peer": peer,
            "launcher": launcher,
            "closing": self.closing,
        }
