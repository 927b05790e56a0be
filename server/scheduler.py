"""The live queue: FIFO dispatch, leases with expiry, attempts, long-poll wake-ups.

The store is the truth on disk; this is its in-memory index, rebuilt from the store at start.
Every state change is written to the store before anyone outside is told about it.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import heapq
import logging
import time
from collections.abc import Callable

from common.ids import new_nonce
from server.jobs import Job, Outcome, State
from server.store import Store

log = logging.getLogger(__name__)

LEASE_BYTES_MAX = 16 << 20  # one lease response carries at most this much body data (but >= 1 job)


@dataclasses.dataclass
class Lease:
    job: Job
    worker: str
    expires: float


class Scheduler:
    def __init__(
        self, store: Store, *, lease_s: float, max_attempts: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.clock = clock
        self.queued: dict[int, Job] = {}
        self._heap: list[int] = []  # seqs, oldest first; entries not in `queued` are stale
        self.leases: dict[int, Lease] = {}
        self.backlog_cost = 0
        self._lease_waiters: list[asyncio.Future[None]] = []
        self._done_waiters: dict[int, list[asyncio.Future[None]]] = collections.defaultdict(list)
        self.closing = False
        self._finish_times: collections.deque[float] = collections.deque(maxlen=100_000)

    # -- start-up --------------------------------------------------------------------------
    async def load(self) -> None:
        """Rebuild the index from disk; jobs that were running get a fresh lease to finish in."""
        now = self.clock()
        running = 0
        for record in await self.store.open_jobs():
            job = Job(record.seq, record.nonce, record.iterations, record.size, record.enqueued_at, record.attempts)
            if record.state is State.QUEUED:
                self._push(job)
            else:
                self.leases[job.seq] = Lease(job, worker="(before restart)", expires=now + self.lease_s)
                running += 1
        log.info("loaded %d queued and %d running jobs", len(self.queued), running)

    # -- queue -----------------------------------------------------------------------------
    def _push(self, job: Job) -> None:
        self.queued[job.seq] = job
        heapq.heappush(self._heap, job.seq)
        self.backlog_cost += job.cost

    def _pop(self) -> Job | None:
        while self._heap:
            seq = heapq.heappop(self._heap)
            job = self.queued.pop(seq, None)
            if job is not None:
                self.backlog_cost -= job.cost
                return job
        return None

    def _wake_leasers(self) -> None:
        waiters, self._lease_waiters = self._lease_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def close(self) -> None:
        """Stop handing out work and release every long-poll now (the server is stopping)."""
        self.closing = True
        self._wake_leasers()
        for waiters in self._done_waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def oldest_wait_s(self, now: float | None = None) -> float:
        while self._heap and self._heap[0] not in self.queued:
            heapq.heappop(self._heap)
        if not self._heap:
            return 0.0
        return max(0.0, (now or self.clock()) - self.queued[self._heap[0]].enqueued_at)

    async def enqueue(self, body: bytes, iterations: int) -> Job:
        nonce = new_nonce()
        now = self.clock()
        seq = await self.store.insert(nonce, iterations, body, now)
        job = Job(seq, nonce, iterations, len(body), now)
        self._push(job)
        self._wake_leasers()
        return job

    # -- leases ----------------------------------------------------------------------------
    def _take(self, worker: str, max_jobs: int) -> list[Job]:
        taken: list[Job] = []
        nbytes = 0
        while len(taken) < max_jobs:
            if (
                taken
                and self._heap
                and self._heap[0] in self.queued
                and nbytes + self.queued[self._heap[0]].size > LEASE_BYTES_MAX
            ):
                break
            job = self._pop()
            if job is None:
                break
            job.attempts += 1
            self.leases[job.seq] = Lease(job, worker, self.clock() + self.lease_s)
            taken.append(job)
            nbytes += job.size
        return taken

    async def lease(self, worker: str, max_jobs: int, wait_s: float) -> list[tuple[Job, bytes]]:
        """Up to max_jobs oldest jobs with their bodies; waits up to wait_s for work to arrive."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            if self.closing:
                return []
            jobs = self._take(worker, max_jobs)
            if jobs:
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            fut = loop.create_future()
            self._lease_waiters.append(fut)
            try:
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                return []
            finally:
                if fut in self._lease_waiters:
                    self._lease_waiters.remove(fut)
        try:
            bodies = self.store.lease([j.seq for j in jobs], worker)
        except BaseException:
            self._unlease(jobs, worker)  # nothing was handed out
            raise
        handed = []
        for job in jobs:
            if job.seq in bodies:
                handed.append((job, bodies[job.seq]))
            else:  # finished meanwhile (a late result of an earlier lease)
                self._drop_lease(job.seq, worker)
        return handed

    def _unlease(self, jobs: list[Job], worker: str) -> None:
        for job in jobs:
            lease = self.leases.get(job.seq)
            if lease is not None and lease.worker == worker:
                del self.leases[job.seq]
                job.attempts -= 1
                self._push(job)
        self._wake_leasers()

    def _drop_lease(self, seq: int, worker: str) -> None:
        lease = self.leases.get(seq)
        if lease is not None and lease.worker == worker:
            del self.leases[seq]

    def held_by(self, worker: str) -> list[int]:
        return [seq for seq, lease in self.leases.items() if lease.worker == worker]

    def heartbeat(self, worker: str, seqs: list[int]) -> list[int]:
        """Extend this worker's leases; returns the seqs it no longer holds."""
        expires = self.clock() + self.lease_s
        lost = []
        for seq in seqs:
            lease = self.leases.get(seq)
            if lease is not None and lease.worker == worker:
                lease.expires = expires
            else:
                lost.append(seq)
        return lost

    async def release(self, worker: str, seqs: list[int]) -> int:
        """Give jobs back unstarted (a draining worker): requeued without counting the attempt."""
        mine = [seq for seq in seqs if seq in self.leases and self.leases[seq].worker == worker]
        await self.store.requeue(mine, refund_attempt=True)
        for seq in mine:
            lease = self.leases.pop(seq, None)
            if lease is not None:
                lease.job.attempts = max(0, lease.job.attempts - 1)
                self._push(lease.job)
        if mine:
            self._wake_leasers()
        return len(mine)

    async def expire(self, *, worker: str | None = None) -> tuple[int, int]:
        """Requeue leases that expired (or all of `worker`'s); fail jobs out of attempts.

        Returns (requeued, failed).
        """
        now = self.clock()
        victims = [
            lease
            for lease in self.leases.values()
            if (lease.worker == worker if worker is not None else lease.expires <= now)
        ]
        if not victims:
            return 0, 0
        exhausted = [lease for lease in victims if lease.job.attempts >= self.max_attempts]
        retry = [lease for lease in victims if lease.job.attempts < self.max_attempts]
        if retry:
            await self.store.requeue([lease.job.seq for lease in retry])
        if exhausted:
            reason = f"gave up after {self.max_attempts} attempts: lease expired without a result (worker lost)"
            await self._finish([Outcome(lease.job.seq, None, reason) for lease in exhausted], None)
        for lease in retry:
            if self.leases.get(lease.job.seq) is lease:
                del self.leases[lease.job.seq]
                self._push(lease.job)
        if retry:
            self._wake_leasers()
            log.info(
                "requeued %d jobs whose leases %s",
                len(retry),
                f"were held by silent worker {worker}" if worker else "expired",
            )
        return len(retry), len(exhausted)

    # -- results ---------------------------------------------------------------------------
    async def complete(self, worker: str, results: list[tuple[int, bytes]]) -> int:
        """Record results; first result wins. Returns how many were new."""
        return len(await self._finish([Outcome(seq, result) for seq, result in results], worker))

    async def fail_attempt(self, worker: str, failures: list[tuple[int, str]]) -> int:
        """A worker could not compute these: retry elsewhere, or fail once out of attempts."""
        final = [
            Outcome(seq, None, f"worker error: {error}")
            for seq, error in failures
            if seq in self.leases and self.leases[seq].job.attempts >= self.max_attempts
        ]
        retry = [
            seq
            for seq, _ in failures
            if seq in self.leases
            and self.leases[seq].worker == worker
            and self.leases[seq].job.attempts < self.max_attempts
        ]
        done = await self._finish(final, worker) if final else []
        if retry:
            await self.store.requeue(retry)
            for seq in retry:
                lease = self.leases.pop(seq, None)
                if lease is not None:
                    self._push(lease.job)
            self._wake_leasers()
        return len(done)

    async def _finish(self, outcomes: list[Outcome], worker: str | None) -> list[int]:
        now = self.clock()
        done = await self.store.finish(outcomes, worker, now)
        for seq in done:
            self.leases.pop(seq, None)
            job = self.queued.pop(seq, None)
            if job is not None:
                self.backlog_cost -= job.cost
            for fut in self._done_waiters.pop(seq, ()):
                if not fut.done():
                    fut.set_result(None)
            self._finish_times.append(now)
        return done

    async def wait_finished(self, seq: int, timeout_s: float) -> None:
        """Return when the job finishes or the timeout passes (no error either way)."""
        if seq not in self.queued and seq not in self.leases:
            return
        fut = asyncio.get_running_loop().create_future()
        self._done_waiters[seq].append(fut)
        try:
            await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            pass
        finally:
            waiters = self._done_waiters.get(seq)
            if waiters is not None and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._done_waiters[seq]

    def jobs_per_s(self, window_s: float = 10.0) -> float:
        cutoff = self.clock() - window_s
        times = self._finish_times
        while times and times[0] < cutoff:
            times.popleft()
        return len(times) / window_s
