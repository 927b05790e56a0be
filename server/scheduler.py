"""The live queue: FIFO dispatch, leases with expiry, attempts, long-poll wake-ups.

The store is the truth on disk; this is its in-memory index, rebuilt from the store at start.
Every state change is written to the store before anyone outside is told about it.

A lease is a capability: each hand-out of a job to a worker gets an unguessable lease id, and
only that worker, naming that id, can extend, release or fail it. Every lease id issued for an
unfinished job is remembered (`grants`), so a late result from an earlier holder of the job can
still be recognised as genuine; see Service.complete for what is accepted.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import heapq
import logging

from common.ids import new_nonce, new_token
from server.arrival import ArrivalHasher
from server.clock import SYSTEM_CLOCK, Clock
from server.events import Events
from server.jobs import Job, Outcome, State
from server.store import Grant, Store

log = logging.getLogger(__name__)

LEASE_BYTES_MAX = 16 << 20  # one lease response carries at most this much body data (but >= 1 job)
READ_ON_LOOP_BYTES = 1 << 20  # bodies of a lease read on the event loop up to this; beyond, in a thread

#: told of each job as it finishes: the job, its error (None: completed), the worker that held it


@dataclasses.dataclass
class Lease:
    lease_id: str
    job: Job
    worker: str
    expires: float  # monotonic
    started: float = 0.0  # monotonic: when it was handed out


def new_lease_id() -> str:
    return new_token(16)


class Scheduler:
    def __init__(
        self,
        store: Store,
        *,
        lease_s: float,
        max_attempts: int,
        clock: Clock = SYSTEM_CLOCK,
        events: Events | None = None,
        hasher: ArrivalHasher | None = None,
    ) -> None:
        self.store = store
        self.hasher = hasher or ArrivalHasher()
        self.events = events or Events()  # must be cheap: its hooks run for every job
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.clock = clock
        self.queued: dict[int, Job] = {}
        self._heap: list[int] = []  # seqs, oldest first; entries not in `queued` are stale
        self.leases: dict[int, Lease] = {}  # the current lease of each running job, by seq
        self.grants: dict[str, Grant] = {}  # every lease id issued for an unfinished job
        self._grants_of: dict[int, list[str]] = collections.defaultdict(list)  # seq -> its lease ids
        self.backlog_cost = 0
        self._lease_waiters: list[asyncio.Future[None]] = []
        self._done_waiters: dict[int, list[asyncio.Future[None]]] = collections.defaultdict(list)
        self.closing = False
        self._finish_times: collections.deque[float] = collections.deque(maxlen=100_000)

    # -- start-up --------------------------------------------------------------------------
    async def load(self) -> None:
        """Rebuild the index from disk. A job that was running keeps its lease (same id and
        worker) with a fresh term, so its worker can still report it after this restart."""
        now = self.clock.mono()
        wall = self.clock.wall()
        records, grants = await self.store.open_jobs()
        for lease_id, grant in grants:
            self._remember(lease_id, grant)
        for r in records:
            job = Job(
                r.seq,
                r.nonce,
                r.iterations,
                r.size,
                r.enqueued_at,
                r.attempts,
                waiting_since=now,
                where=r.where,
                enqueued_mono=now - max(0.0, wall - r.enqueued_at),
            )
            if r.state is State.QUEUED:
                self._push(job)
            else:
                lease_id = r.lease_id or new_lease_id()
                self.leases[job.seq] = Lease(lease_id, job, r.worker or "(unknown)", now + self.lease_s, started=now)
        log.info("loaded %d queued and %d running jobs", len(self.queued), len(self.leases))

    # -- queue -----------------------------------------------------------------------------
    def _push(self, job: Job) -> None:
        job.waiting_since = self.clock.mono()
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

    def oldest_wait_s(self) -> float:
        """How long the job at the head of the queue has waited (monotonic), 0 when none."""
        while self._heap and self._heap[0] not in self.queued:
            heapq.heappop(self._heap)
        if not self._heap:
            return 0.0
        return max(0.0, self.clock.mono() - self.queued[self._heap[0]].waiting_since)

    async def enqueue(self, body: bytes, iterations: int) -> Job:
        nonce = new_nonce()
        enqueued_at = self.clock.wall()
        seq, where = await self.store.insert(nonce, iterations, body, enqueued_at)
        job = Job(seq, nonce, iterations, len(body), enqueued_at, where=where, enqueued_mono=self.clock.mono())
        self._push(job)
        self._wake_leasers()
        return job

    async def enqueue_done(self, pieces: list[bytes], iterations: int) -> tuple[Job, bytes]:
        """Hash a job on arrival and store it finished, with its result and without its body (see
        Service.enqueue); the job and its result. It never enters the queue. The body is given in
        the pieces it came in."""
        nonce = new_nonce()
        enqueued_at = self.clock.wall()
        size = sum(map(len, pieces))
        result = await self.hasher.chain(pieces, iterations)
        seq = await self.store.insert_completed(nonce, iterations, size, result, enqueued_at)
        now = self.clock.mono()
        self._finish_times.append(now)
        return Job(seq, nonce, iterations, size, enqueued_at, enqueued_mono=now), result

    # -- leases ----------------------------------------------------------------------------
    def _take(self, worker: str, max_jobs: int) -> list[Lease]:
        taken: list[Lease] = []
        nbytes = 0
        expires = self.clock.mono() + self.lease_s
        while len(taken) < max_jobs:
            head = self.queued.get(self._heap[0]) if self._heap else None
            if taken and head is not None and nbytes + head.size > LEASE_BYTES_MAX:
                break
            job = self._pop()
            if job is None:
                break
            job.attempts += 1
            lease = Lease(new_lease_id(), job, worker, expires, started=expires - self.lease_s)
            self.leases[job.seq] = lease
            self._remember(lease.lease_id, Grant((job.seq, worker)))
            taken.append(lease)
            nbytes += job.size
        return taken

    async def lease(self, worker: str, max_jobs: int, wait_s: float) -> list[tuple[Lease, bytes]]:
        """Up to max_jobs oldest jobs with their bodies; waits up to wait_s for work to arrive."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            if self.closing:
                return []
            taken = self._take(worker, max_jobs)
            if taken:
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
        wanted = [(lease.job.seq, lease.job.size, lease.job.where) for lease in taken]
        try:
            if sum(size for _, size, _ in wanted) > READ_ON_LOOP_BYTES and all(w for _, _, w in wanted):
                bodies = await asyncio.to_thread(self.store.read_bodies, wanted)  # megabytes: off the loop
            else:
                bodies = self.store.read_bodies(wanted)
            handed = [
                (lease, bodies[lease.job.seq])
                for lease in taken
                if lease.job.seq in bodies and self.leases.get(lease.job.seq) is lease
            ]
            self.store.record_leases([(lease.job.seq, lease.lease_id) for lease, _ in handed], worker)
        except BaseException:
            self.release_now(taken)  # nothing was handed out
            raise
        for lease in taken:  # finished meanwhile (a late result): nothing to hand out
            if lease.job.seq not in bodies and self.leases.get(lease.job.seq) is lease:
                del self.leases[lease.job.seq]
        self.events.leased([lease for lease, _ in handed])
        return handed

    def release_now(self, leases: list[Lease]) -> None:
        """Put back jobs whose lease never reached the worker (in memory: nothing was recorded)."""
        for lease in leases:
            if self.leases.get(lease.job.seq) is lease:
                del self.leases[lease.job.seq]
                lease.job.attempts -= 1
                self._push(lease.job)
        self._wake_leasers()

    def _remember(self, lease_id: str, grant: Grant) -> None:
        self.grants[lease_id] = grant
        self._grants_of[grant.seq].append(lease_id)

    def current(self, seq: int) -> Lease | None:
        return self.leases.get(seq)

    def grant(self, lease_id: str) -> Grant | None:
        """Who the lease id was issued to (remembered for unfinished jobs, else from the store)."""
        return self.grants.get(lease_id) or self.store.grant(lease_id)

    def nonce(self, seq: int) -> str | None:
        """The nonce of an unfinished job (None when it is not in the index)."""
        job = self.queued.get(seq)
        if job is None and (lease := self.leases.get(seq)) is not None:
            job = lease.job
        return None if job is None else job.nonce

    def held_by(self, worker: str) -> list[int]:
        return [seq for seq, lease in self.leases.items() if lease.worker == worker]

    def extend(self, leases: list[Lease]) -> None:
        """A heartbeat: these leases get a fresh term."""
        expires = self.clock.mono() + self.lease_s
        for lease in leases:
            lease.expires = expires

    async def release(self, leases: list[Lease]) -> int:
        """Give jobs back unstarted (a draining worker): requeued without counting the attempt."""
        mine = [lease for lease in leases if self.leases.get(lease.job.seq) is lease]
        await self.store.requeue([lease.job.seq for lease in mine], refund_attempt=True, outcome="released unstarted")
        for lease in mine:
            if self.leases.get(lease.job.seq) is lease:
                del self.leases[lease.job.seq]
                lease.job.attempts = max(0, lease.job.attempts - 1)
                self._push(lease.job)
        if mine:
            self._wake_leasers()
            self.events.requeued(mine, "released unstarted")
        return len(mine)

    async def expire(self, *, worker: str | None = None) -> tuple[int, int]:
        """Requeue leases that expired (or all of `worker`'s); fail jobs out of attempts.

        Returns (requeued, failed)."""
        now = self.clock.mono()
        victims = [
            lease
            for lease in self.leases.values()
            if (lease.worker == worker if worker is not None else lease.expires <= now)
        ]
        if not victims:
            return 0, 0
        exhausted = [lease for lease in victims if lease.job.attempts >= self.max_attempts]
        retry = [lease for lease in victims if lease.job.attempts < self.max_attempts]
        why = f"worker {worker} silent: reaped" if worker else "lease expired"
        if retry:
            await self.store.requeue([lease.job.seq for lease in retry], outcome=why)
        if exhausted:
            reason = f"gave up after {self.max_attempts} attempts: lease expired without a result (worker lost)"
            await self._finish([Outcome(lease.job.seq, None, reason) for lease in exhausted], None)
        for lease in retry:
            if self.leases.get(lease.job.seq) is lease:
                del self.leases[lease.job.seq]
                self._push(lease.job)
        if retry:
            self._wake_leasers()
            self.events.requeued(retry, why)
            log.info("requeued %d jobs: %s", len(retry), why)
        return len(retry), len(exhausted)

    # -- results ---------------------------------------------------------------------------
    async def complete(self, worker: str, results: list[tuple[int, bytes, str]]) -> int:
        """Record results (seq, digest, the lease they came under); first result wins. Returns
        how many were new."""
        return len(await self._finish([Outcome(seq, result, lease_id=lease) for seq, result, lease in results], worker))

    async def fail_attempt(self, failures: list[tuple[Lease, str]]) -> int:
        """The holders of these (current) leases could not compute them: retry, or fail the job
        once out of attempts. Returns how many jobs failed for good."""
        current = [(lease, error) for lease, error in failures if self.leases.get(lease.job.seq) is lease]
        final = [(lease, e) for lease, e in current if lease.job.attempts >= self.max_attempts]
        retry = [lease for lease, _ in current if lease.job.attempts < self.max_attempts]
        done = []
        for lease, error in final:
            outcome = Outcome(lease.job.seq, None, f"worker error: {error}", lease_id=lease.lease_id)
            done += await self._finish([outcome], lease.worker)
        if retry:
            errors = dict((lease.job.seq, error) for lease, error in current)
            await self.store.requeue([lease.job.seq for lease in retry], outcome="worker error")
            for lease in retry:
                if self.leases.get(lease.job.seq) is lease:
                    del self.leases[lease.job.seq]
                    self._push(lease.job)
            self._wake_leasers()
            for lease in retry:
                self.events.requeued([lease], f"worker error: {errors[lease.job.seq][:200]}")
        return len(done)

    async def _finish(self, outcomes: list[Outcome], worker: str | None) -> list[int]:
        done = await self.store.finish(outcomes, worker, self.clock.wall())
        now = self.clock.mono()
        errors = {o.seq: o.error for o in outcomes if o.error is not None}
        for seq in done:
            for lease_id in self._grants_of.pop(seq, ()):
                self.grants.pop(lease_id, None)
            lease = self.leases.pop(seq, None)
            job = self.queued.pop(seq, None)
            if job is not None:
                self.backlog_cost -= job.cost
            elif lease is not None:
                job = lease.job
            if job is not None:
                self.events.finished(job, errors.get(seq), worker or (lease.worker if lease else None), lease)
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
        cutoff = self.clock.mono() - window_s
        times = self._finish_times
        while times and times[0] < cutoff:
            times.popleft()
        return len(times) / window_s
