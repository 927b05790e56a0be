"""The worker: lease from both servers (own first), hash in one thread per core, report in batches.

Event-loop tasks do all I/O; each hashing thread runs a `native.Feed` (worker/feeds.py), which
releases the GIL and takes jobs leased while it runs into its free lanes. Every job is in exactly
one place: pending (leased, not started), running (pushed to a feed, or hashed on the loop), or
done (digest waiting to be reported), and heartbeats cover the first two.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import aiohttp

from common.cost import ON_LOOP_MAX_COMPRESSIONS, compressions, job_cost
from common.feedwake import FeedWake
from common.http import AiohttpTransport, Refused, Unauthorized, Unavailable
from worker.client import Held, Leased, LeasedJob, Report, ServerClient
from worker.config import WorkerSettings
from worker.feeds import BatchFeed, Feed, Hasher

log = logging.getLogger(__name__)

RATE_EWMA = 0.3
MAX_HELD = 2048  # never hold more jobs than this, however fast they go
HEARTBEAT_MAX_S = 5.0  # well inside the server's worker_dead_s (15 s by default)
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.1, 5.0
FLUSH_ATTEMPTS_ON_EXIT = 5
INLINE_HASH_MAX = ON_LOOP_MAX_COMPRESSIONS  # what a batch may need to be hashed on the event loop

FEED_CAPACITY = 4 * MAX_HELD  # jobs one feed takes in its life; a full one ends after its last job


class Server(Protocol):
    """One server's internal API as the worker uses it (worker.client.ServerClient over HTTP)."""

    url: str

    async def lease(self, max_jobs: int, wait_s: float) -> Leased: ...

    async def complete(self, results: list[Report], failures: list[Report], stats: dict[str, Any]) -> int: ...

    async def heartbeat(self, held: list[Held], stats: dict[str, Any]) -> list[Held]: ...

    async def release(self, held: list[Held], stats: dict[str, Any]) -> None: ...


class Fatal(Exception):
    """The worker cannot go on (a server rejects its credentials)."""


class Backoff:
    def __init__(self) -> None:
        self.delay = 0.0

    def reset(self) -> None:
        self.delay = 0.0

    async def sleep(self) -> None:
        self.delay = min(BACKOFF_MAX_S, max(BACKOFF_MIN_S, self.delay * 2))
        await asyncio.sleep(self.delay * random.uniform(0.5, 1.0))


class Worker:
    def __init__(
        self,
        settings: WorkerSettings,
        token: str,
        *,
        hasher: Hasher,
        lanes: int = 1,
        feed: Callable[[int], Feed] | None = None,
    ) -> None:
        """`hasher` hashes a list of jobs at once (on the event loop, for the cheapest); `feed`
        makes a feed of a given capacity for a hashing thread (native.Feed; by default the hasher
        as a BatchFeed)."""
        self.settings = settings
        self.token = token
        self.hasher = hasher
        self.feed: Callable[[int], Feed] = feed if feed is not None else lambda capacity: BatchFeed(hasher, capacity)
        self.threads = settings.compute_threads
        self.lanes = max(1, lanes)
        self.min_held = self.threads * self.lanes * 2
        self.pending: collections.deque[LeasedJob] = collections.deque()
        self.running: dict[str, LeasedJob] = {}
        self.done: dict[str, list[Report]] = {url: [] for url in settings.servers}
        self.failed: dict[str, list[Report]] = {url: [] for url in settings.servers}
        self.jobs_per_s = 0.0  # measured over busy time, all threads
        self.cost_per_s = 0.0  # the same in policy cost units (what the server's autoscaler plans with)
        self.last_work = time.monotonic()
        self.completed = 0
        self.lease_s = 30.0  # the shortest lease a server has announced
        self.stopping = asyncio.Event()
        self.exit_code = 0
        self.abandoned_hashing = False  # a hashing thread still runs a job this worker released
        self._work_ready = asyncio.Event()
        self._room = asyncio.Event()
        self._heartbeat_due = asyncio.Event()
        self._own_idle = asyncio.Event()  # set while the own server has nothing queued (its last answer said so)
        self._flush_wanted = {url: asyncio.Event() for url in settings.servers}
        self._pool = concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="hash")
        self._pokes: set[asyncio.Event] = set()  # one per running feed: wakes its loop
        self.clients: list[Server] = []

    # -- sizes -----------------------------------------------------------------------------
    @property
    def held(self) -> int:
        return len(self.pending) + len(self.running)

    def target_held(self) -> int:
        """Enough to keep every lane busy for two batches, not so much that others starve."""
        want = math.ceil(self.jobs_per_s * self.settings.batch_s * 2)
        return min(MAX_HELD, max(self.min_held, want))

    def stats(self) -> dict[str, Any]:
        return {
            "rate": round(self.cost_per_s, 1),
            "jobs_per_s": round(self.jobs_per_s, 1),
            "busy": self.held > 0,
            "held": self.held,
            "threads": self.threads,
        }

    # -- lifecycle -------------------------------------------------------------------------
    async def run(self, clients: Sequence[Server] | None = None) -> int:
        """Work until stopped (signal, idle, a fatal error); returns the exit code. `clients`, one
        per server (own first), replace the HTTP clients built from the settings (tests)."""
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
        async with aiohttp.ClientSession(connector=connector) as session:
            transport = AiohttpTransport(session)
            self.clients = (
                list(clients)
                if clients is not None
                else [ServerClient(url, self.token, self.settings.identity, transport) for url in self.settings.servers]
            )
            log.info(
                "worker %s: %d thread(s), servers %s",
                self.settings.identity,
                self.threads,
                ", ".join(self.settings.servers),
            )
            leasers = [
                asyncio.create_task(self._lease_loop(c, own=i == 0), name=f"lease-{i}")
                for i, c in enumerate(self.clients)
            ]
            hashers = [asyncio.create_task(self._compute_loop(), name=f"compute-{i}") for i in range(self.threads)]
            services = [asyncio.create_task(self._flush_loop(c), name=f"flush-{c.url}") for c in self.clients]
            services.append(asyncio.create_task(self._heartbeat_loop(), name="heartbeat"))
            services.append(asyncio.create_task(self._idle_watch(), name="idle"))
            for task in leasers + hashers + services:
                task.add_done_callback(self._task_done)
            await self.stopping.wait()
            await self._drain(leasers, hashers, services)
        self._pool.shutdown(wait=False, cancel_futures=True)
        return self.exit_code

    def stop(self, reason: str) -> None:
        if not self.stopping.is_set():
            log.info("stopping: %s", reason)
            self.stopping.set()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        if isinstance(exc, Fatal):
            log.error("%s", exc)
        else:
            log.error("task %s died", task.get_name(), exc_info=exc)
        self.exit_code = 1
        self.stop("a worker task failed")

    async def _drain(
        self, leasers: list[asyncio.Task[None]], hashers: list[asyncio.Task[None]], services: list[asyncio.Task[None]]
    ) -> None:
        """Stop leasing, hand back what has not started, finish what has, report everything."""
        for task in leasers:
            task.cancel()
        await asyncio.gather(*leasers, return_exceptions=True)
        unstarted = list(self.pending)
        self.pending.clear()
        await self._release(unstarted)
        self._work_ready.set()  # hashers see no work and stopping: they return
        _, still_running = await asyncio.wait(hashers, timeout=self.settings.drain_timeout_s)
        if still_running:
            log.warning(
                "%d job(s) still running after %.0fs; releasing them", len(self.running), self.settings.drain_timeout_s
            )
            await self._release(list(self.running.values()))
            for task in still_running:
                task.cancel()  # their results are no longer ours to report
            self.abandoned_hashing = True
        for task in services:
            task.cancel()
        await asyncio.gather(*hashers, *services, return_exceptions=True)
        for client in self.clients:
            try:
                await self._flush(client, attempts=FLUSH_ATTEMPTS_ON_EXIT)
            except Fatal as exc:
                log.error("%s", exc)
                self.exit_code = 1
        log.info("drained: %d job(s) completed in this run", self.completed)

    async def _release(self, jobs: list[LeasedJob]) -> None:
        for client in self.clients:
            ids = [j.held for j in jobs if j.server == client.url]
            if ids:
                try:
                    await client.release(ids, self.stats())
                except (Unavailable, Refused) as exc:
                    log.warning(
                        "could not release %d job(s) to %s (their leases will expire): %s", len(ids), client.url, exc
                    )

    # -- leasing ---------------------------------------------------------------------------
    async def _lease_loop(self, client: Server, *, own: bool) -> None:
        backoff = Backoff()
        while not self.stopping.is_set():
            room = self.target_held() - self.held
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            if not own and not self._own_idle.is_set():
                await self._own_idle.wait()  # the own server's work comes first
                continue
            # The own server answers at once (no long-poll) until it says it has nothing queued:
            # only then does the peer's work flow, and a long-poll there waits for new work.
            wait_s = self.settings.lease_wait_s if not own or self._own_idle.is_set() else 0.0
            leased = await self._lease_once(client, room, wait_s, own=own)
            if leased is None:
                await backoff.sleep()
                continue
            lease_s, jobs, more = leased
            backoff.reset()
            if lease_s < self.lease_s:
                self.lease_s = lease_s
                self._heartbeat_due.set()  # the current sleep may be longer than this lease
            if own:
                if more:
                    self._own_idle.clear()
                else:
                    self._own_idle.set()
            if jobs:
                self.pending.extend(jobs)
                self.last_work = time.monotonic()
                self._work_arrived()

    async def _lease_once(self, client: Server, room: int, wait_s: float, *, own: bool) -> Leased | None:
        """One lease call; None when it failed (and may be retried after a back-off)."""
        try:
            return await client.lease(room, wait_s)
        except Unauthorized as exc:
            raise Fatal(f"{client.url} rejected this worker: {exc}") from None
        except (Unavailable, Refused) as exc:
            (log.debug if isinstance(exc, Unavailable) else log.error)("lease from %s failed: %s", client.url, exc)
            if own:
                self._own_idle.set()  # let the peer's work flow while ours cannot give any
            return None

    # -- hashing ---------------------------------------------------------------------------
    def _take_batch(self, on_lanes: int = 0, on_lanes_cost: int = 0) -> list[LeasedJob]:
        """Enough jobs for about batch_s of one thread, and at least one job per lane, counting
        the `on_lanes` jobs (of `on_lanes_cost`) the thread already has."""
        budget = self.cost_per_s / self.threads * self.settings.batch_s if self.cost_per_s else 0
        batch: list[LeasedJob] = []
        cost = on_lanes_cost
        while self.pending and (on_lanes + len(batch) < self.lanes or cost < budget):
            job = self.pending.popleft()
            batch.append(job)
            cost += job_cost(job.iterations, len(job.body))
        return batch

    async def _compute_loop(self) -> None:
        while True:
            if not self.pending:
                if self.stopping.is_set():
                    return
                self._work_ready.clear()
                await self._work_ready.wait()
                continue
            batch = self._take_batch()
            if sum(compressions(j.iterations, len(j.body)) for j in batch) <= INLINE_HASH_MAX:
                self._hash_inline(batch)  # microseconds: a thread hand-off would cost more
            else:
                await self._hash_in_feed(batch)

    def _hash_inline(self, batch: list[LeasedJob]) -> None:
        for job in batch:
            self.running[job.work_id] = job
        started = time.monotonic()
        try:
            digests = self.hasher([(j.body, j.iterations) for j in batch])
        except Exception as exc:
            log.exception("hashing a batch of %d failed", len(batch))
            self._failed(batch, exc)
        else:
            elapsed = time.monotonic() - started
            self._measure(len(batch), sum(job_cost(j.iterations, len(j.body)) for j in batch), elapsed)
            self._finished(list(zip(batch, digests, strict=True)))

    async def _hash_in_feed(self, batch: list[LeasedJob]) -> None:
        """Hash `batch` in a feed on one hashing thread. While it runs, jobs leased meanwhile join
        it as its lanes free up (a long job holds one lane, not the whole thread), and each digest
        is taken as soon as its job is done."""
        lanes = _Lanes(self.feed(FEED_CAPACITY))
        self._push(lanes, batch)
        poke = asyncio.Event()  # a job is done, the run is over, or jobs were leased
        wake = FeedWake.open(asyncio.get_running_loop(), poke.set)
        if wake is not None:
            lanes.feed.notify(wake.fd)
        running = self._pool.submit(lanes.feed.run)
        ran = asyncio.wrap_future(running)
        ran.add_done_callback(lambda _: poke.set())
        self._pokes.add(poke)
        since, jobs, cost = time.monotonic(), 0, 0  # what was done since the last measurement
        try:
            while True:
                poke.clear()
                on_lanes_cost = lanes.cost
                done = lanes.take_done()
                self._finished(done)
                jobs += len(done)
                cost += on_lanes_cost - lanes.cost  # what the jobs just done cost
                elapsed = time.monotonic() - since
                if jobs and (ran.done() or elapsed >= self.settings.batch_s):
                    self._measure(jobs, cost, elapsed)
                    since, jobs, cost = time.monotonic(), 0, 0
                if ran.done():
                    break
                if not self.stopping.is_set():
                    self._push(lanes, self._take_batch(lanes.unfinished, lanes.cost))
                await poke.wait()
            error = ran.exception()
            if error is not None:
                log.error("hashing failed: %s: %s", type(error).__name__, error)
                self._failed(lanes.not_done(), error)
        finally:
            self._pokes.discard(poke)
            if wake is not None:
                wake.close(running)

    def _push(self, lanes: _Lanes, jobs: list[LeasedJob]) -> None:
        """Jobs to a feed's lanes, and so running; the ones it refuses (it closed meanwhile, or is
        full) back to the front of pending, for the next feed."""
        refused = lanes.push(jobs)
        for job in jobs[: len(jobs) - len(refused)]:
            self.running[job.work_id] = job
        self.pending.extendleft(reversed(refused))  # held is unchanged: no room for the leasers

    def _finished(self, done: list[tuple[LeasedJob, bytes]]) -> None:
        for job, digest in done:
            self.running.pop(job.work_id, None)
            self.done[job.server].append((*job.held, digest.hex()))
            self._flush_wanted[job.server].set()
        if done:
            self.last_work = time.monotonic()
            self._room.set()

    def _failed(self, jobs: list[LeasedJob], exc: BaseException) -> None:
        for job in jobs:
            self.running.pop(job.work_id, None)
            self.failed[job.server].append((*job.held, f"{type(exc).__name__}: {exc}"))
            self._flush_wanted[job.server].set()
        self.last_work = time.monotonic()
        self._room.set()

    def _work_arrived(self) -> None:
        self._work_ready.set()  # an idle hashing loop starts a feed
        for poke in self._pokes:  # a running feed with free lanes takes some
            poke.set()

    def _measure(self, jobs: int, cost: int, elapsed: float) -> None:
        elapsed = max(elapsed, 1e-6)
        # One thread did these; the worker as a whole goes `threads` times as fast.
        jobs_rate = jobs / elapsed * self.threads
        cost_rate = cost / elapsed * self.threads
        if self.jobs_per_s == 0.0:
            self.jobs_per_s, self.cost_per_s = jobs_rate, cost_rate
        else:
            self.jobs_per_s += RATE_EWMA * (jobs_rate - self.jobs_per_s)
            self.cost_per_s += RATE_EWMA * (cost_rate - self.cost_per_s)

    # -- reporting -------------------------------------------------------------------------
    async def _flush_loop(self, client: Server) -> None:
        wanted = self._flush_wanted[client.url]
        backoff = Backoff()
        while True:
            await wanted.wait()
            wanted.clear()
            if await self._flush(client, attempts=1):
                backoff.reset()
            else:
                wanted.set()
                await backoff.sleep()

    async def _flush(self, client: Server, *, attempts: int) -> bool:
        """Report everything done for this server, including what finishes while a report is on
        its way; False when `attempts` reports failed and results still wait to be sent again."""
        failed = 0
        while True:
            results, failures = self.done[client.url], self.failed[client.url]
            if not results and not failures:
                return True
            self.done[client.url], self.failed[client.url] = [], []
            try:
                # Shielded: a drain that cancels the flush loop must not lose a batch in flight.
                report = asyncio.ensure_future(client.complete(results, failures, self.stats()))
                report.add_done_callback(_consume)  # its outcome is handled here, or moot after a cancel
                await asyncio.shield(report)
                self.completed += len(results)
            except asyncio.CancelledError:
                self.done[client.url][:0] = results
                self.failed[client.url][:0] = failures
                raise
            except Unauthorized as exc:
                raise Fatal(f"{client.url} rejected this worker: {exc}") from None
            except Refused as exc:
                # The server refused the batch itself; resending it cannot help.
                log.error("%s refused %d result(s): %s", client.url, len(results) + len(failures), exc)
            except Unavailable as exc:
                log.warning("reporting to %s failed (will retry): %s", client.url, exc)
                self.done[client.url][:0] = results
                self.failed[client.url][:0] = failures
                failed += 1
                if failed >= attempts:
                    return False
                await asyncio.sleep(min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** (failed - 1)))

    async def _heartbeat_loop(self) -> None:
        """Extend held leases and tell the own server this worker is alive (even when idle)."""
        while True:
            for i, client in enumerate(self.clients):
                held = [j.held for j in (*self.pending, *self.running.values()) if j.server == client.url]
                if not held and i > 0:
                    continue
                try:
                    lost = set(await client.heartbeat(held, self.stats()))
                except Unavailable as exc:
                    log.debug("heartbeat to %s failed: %s", client.url, exc)
                    continue
                except Unauthorized as exc:
                    raise Fatal(f"{client.url} rejected this worker: {exc}") from None
                except Refused as exc:
                    log.error("heartbeat to %s refused: %s", client.url, exc)
                    continue
                if lost:
                    # Someone else has these now; do not start them (running ones still report).
                    self.pending = collections.deque(j for j in self.pending if j.held not in lost)
                    log.info("%d lease(s) on %s were lost", len(lost), client.url)
            self._heartbeat_due.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._heartbeat_due.wait(), self._heartbeat_interval())

    def _heartbeat_interval(self) -> float:
        return min(HEARTBEAT_MAX_S, self.lease_s / 3)

    async def _idle_watch(self) -> None:
        idle_s = self.settings.idle_exit_s
        if idle_s <= 0:
            return
        while True:
            quiet = time.monotonic() - self.last_work
            if self.held == 0 and quiet >= idle_s:
                self.stop(f"no work for {idle_s:g}s")
                return
            await asyncio.sleep(max(0.1, min(1.0, idle_s - quiet)))


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve a shielded report's outcome so that one finishing after a cancel is not logged
    as an exception nobody retrieved (the batch was put back and is sent again)."""
    if not task.cancelled():
        task.exception()


class _Lanes:
    """A hashing thread's feed and the jobs pushed to it, by index, until each is taken done."""

    def __init__(self, feed: Feed) -> None:
        self.feed = feed
        self.jobs: list[LeasedJob | None] = []
        self.taken = 0  # jobs done and taken so far
        self.cost = 0  # of the jobs pushed and not yet taken

    @property
    def unfinished(self) -> int:
        return len(self.jobs) - self.taken

    def push(self, jobs: list[LeasedJob]) -> list[LeasedJob]:
        """Pushes the jobs in order; those the feed refused (closed or full), the rest of them."""
        for i, job in enumerate(jobs):
            index = self.feed.push(job.body, job.iterations)
            if index is None:
                return jobs[i:]
            assert index == len(self.jobs), "a feed's indices are its push order"
            self.jobs.append(job)
            self.cost += job_cost(job.iterations, len(job.body))
        return []

    def take_done(self) -> list[tuple[LeasedJob, bytes]]:
        """The jobs done since the last call, with their digests, in the order they were done."""
        done = []
        for index, digest in self.feed.finished(self.taken):
            job, self.jobs[index] = self.jobs[index], None
            assert job is not None, "a feed publishes each job once"
            self.cost -= job_cost(job.iterations, len(job.body))
            done.append((job, digest))
        self.taken += len(done)
        return done

    def not_done(self) -> list[LeasedJob]:
        return [job for job in self.jobs if job is not None]
