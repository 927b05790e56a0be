"""What happens to jobs, told as it happens to whoever watches: the dashboard's recorder, the
Prometheus metrics, the event log. The scheduler and the service call these hooks; each must be
cheap (O(1) per job, no I/O but a log line), because they run on the hot path.

`EventLog` writes one line per event to the `dynwork.events` logger, with the work id and the
worker id as fields (`--log-format json` makes them JSON keys), so an operator can follow a job or
a worker through the log. It never logs a credential, a body or a digest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.jobs import Job
    from server.scheduler import Lease

events_log = logging.getLogger("dynwork.events")


class Events:
    """The hooks, each a no-op here."""

    def enqueued(self, job: Job, seconds: float) -> None:
        """A job was stored durably; `seconds` the enqueue took (body read, store, commit)."""

    def leased(self, leases: Sequence[Lease]) -> None:
        """These jobs were handed to a worker (their lease's `started` is set)."""

    def requeued(self, leases: Sequence[Lease], why: str) -> None:
        """These leases ended without a result and their jobs went back to the queue."""

    def finished(self, job: Job, error: str | None, worker: str | None, lease: Lease | None) -> None:
        """The job finished: completed (error None) or failed; `lease` the current one, if any."""

    def handed_out(self, work_ids: Sequence[str]) -> None:
        """pullCompleted's client was handed these results (confirmed)."""

    def refused(self, reason: str) -> None:
        """A request was refused (queue_full, closing, too_large, conflict, waits, ...)."""

    def committed(self, operations: int, durable: bool, seconds: float) -> None:
        """A group commit: how many operations, whether fsynced, how long the commit took.
        Called from the store's writer thread."""


class Fanout(Events):
    """Every hook passed on to each of several watchers, in order; a watcher that keeps a hook's
    no-op is not called for it (the hooks run for every job)."""

    def __init__(self, *watchers: Events) -> None:
        self.watchers = watchers
        self._enqueued = _overriding(watchers, "enqueued")
        self._leased = _overriding(watchers, "leased")
        self._requeued = _overriding(watchers, "requeued")
        self._finished = _overriding(watchers, "finished")
        self._handed_out = _overriding(watchers, "handed_out")
        self._refused = _overriding(watchers, "refused")
        self._committed = _overriding(watchers, "committed")

    def enqueued(self, job: Job, seconds: float) -> None:
        for hook in self._enqueued:
            hook(job, seconds)

    def leased(self, leases: Sequence[Lease]) -> None:
        for hook in self._leased:
            hook(leases)

    def requeued(self, leases: Sequence[Lease], why: str) -> None:
        for hook in self._requeued:
            hook(leases, why)

    def finished(self, job: Job, error: str | None, worker: str | None, lease: Lease | None) -> None:
        for hook in self._finished:
            hook(job, error, worker, lease)

    def handed_out(self, work_ids: Sequence[str]) -> None:
        for hook in self._handed_out:
            hook(work_ids)

    def refused(self, reason: str) -> None:
        for hook in self._refused:
            hook(reason)

    def committed(self, operations: int, durable: bool, seconds: float) -> None:
        for hook in self._committed:
            hook(operations, durable, seconds)


def _overriding(watchers: Sequence[Events], hook: str) -> tuple[Callable[..., None], ...]:
    """The watchers' own methods for `hook`, without those that inherit Events' no-op."""
    base = getattr(Events, hook)
    return tuple(getattr(w, hook) for w in watchers if getattr(type(w), hook) is not base)


class EventLog(Events):
    """One log line per job event, with `work_id` and `worker` as fields."""

    def __init__(self, server: str) -> None:
        self.server = server

    def _log(self, message: str, work_id: str, worker: str | None = None, **fields: object) -> None:
        events_log.info(message, extra={"work_id": work_id, "worker": worker or "-", **fields})

    def enqueued(self, job: Job, seconds: float) -> None:
        if events_log.isEnabledFor(logging.INFO):
            work_id = str(job.work_id(self.server))
            self._log(f"enqueued {work_id} ({job.iterations} iterations, {job.size} bytes)", work_id)

    def leased(self, leases: Sequence[Lease]) -> None:
        if events_log.isEnabledFor(logging.INFO):
            for lease in leases:
                work_id = str(lease.job.work_id(self.server))
                self._log(f"leased {work_id} to {lease.worker} (attempt {lease.job.attempts})", work_id, lease.worker)

    def requeued(self, leases: Sequence[Lease], why: str) -> None:
        if events_log.isEnabledFor(logging.INFO):
            for lease in leases:
                work_id = str(lease.job.work_id(self.server))
                self._log(f"requeued {work_id} from {lease.worker}: {why}", work_id, lease.worker)

    def finished(self, job: Job, error: str | None, worker: str | None, lease: Lease | None) -> None:
        if events_log.isEnabledFor(logging.INFO):
            work_id = str(job.work_id(self.server))
            if error is None:  # only a job hashed on arrival completes without a worker
                self._log(f"completed {work_id} by {worker or 'this server, on arrival'}", work_id, worker)
            else:
                self._log(f"failed {work_id}: {error[:200]}", work_id, worker)

    def handed_out(self, work_ids: Sequence[str]) -> None:
        if events_log.isEnabledFor(logging.INFO):
            for work_id in work_ids:
                self._log(f"handed out {work_id}", work_id)
