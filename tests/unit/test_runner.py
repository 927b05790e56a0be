"""worker.runner: the Worker with an injected hasher against in-process fake servers.

The fakes implement worker.runner's `Server` protocol; every call takes at least one trip through
the event loop, as over HTTP. The hasher is native.reference wrapped as a batch function, or one
that blocks on a threading.Event (chains above INLINE_HASH_MAX run in the worker's thread pool).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

import native
from common import http
from native.reference import chain
from tests.unit.support import aio, until
from worker.client import Held, Leased, LeasedJob, Report
from worker.config import WorkerSettings
from worker.runner import INLINE_HASH_MAX, Backoff, Worker

OWN, PEER = "http://own.invalid", "http://peer.invalid"
SLOW = INLINE_HASH_MAX + 1  # iterations that make a batch go to the thread pool


class FakeServer:
    """One server's internal API; `errors[call]` holds exceptions the next such calls raise."""

    def __init__(self, url: str, events: list[tuple[Any, ...]] | None = None, *, lease_s: float = 30.0) -> None:
        self.url = url
        self.name = url.split("//")[1].split(".", maxsplit=1)[0]
        self.events = events if events is not None else []
        self.lease_s = lease_s
        self.queue: collections.deque[LeasedJob] = collections.deque()
        self.expected: dict[str, str] = {}  # work id -> the right digest
        self.lease_ids: dict[str, set[str]] = collections.defaultdict(set)  # work id -> lease ids issued
        self.lease_waits: list[float] = []
        self.completed: dict[str, str] = {}
        self.failures: dict[str, str] = {}
        self.complete_calls: list[int] = []
        self.foreign: list[str] = []
        self.released: list[str] = []
        self.heartbeats: list[list[str]] = []
        self.lost: set[str] = set()  # work ids whose leases are lost, all of them
        self.lost_leases: set[str] = set()  # single lost leases
        self.errors: dict[str, collections.deque[Exception]] = collections.defaultdict(collections.deque)
        self.down = False  # every lease fails with Unavailable
        self.block_complete: asyncio.Event | None = None  # set: complete calls wait for it (before arriving)
        self.arrived = asyncio.Event()
        self.complete_started = asyncio.Event()
        self.lost_told = asyncio.Event()
        self.released_event = asyncio.Event()

    def add(self, count: int, iterations: int = 1, *, digest: Callable[[bytes, int], bytes] = chain) -> list[str]:
        ids = []
        for _ in range(count):
            n = len(self.expected) + 1
            work_id, body = f"{self.name}.{n}.abcdef", f"{self.name}-body-{n}".encode()
            self.queue.append(self._leased(work_id, iterations, body))
            self.expected[work_id] = digest(body, iterations).hex()
            ids.append(work_id)
        self.arrived.set()
        return ids

    def _leased(self, work_id: str, iterations: int, body: bytes) -> LeasedJob:
        lease_id = f"lease-{work_id}-{len(self.lease_ids[work_id])}-0123456789"
        self.lease_ids[work_id].add(lease_id)
        return LeasedJob(work_id, lease_id, iterations, body, self.url)

    def again(self, job: LeasedJob) -> LeasedJob:
        """The same job queued once more under a new lease (its earlier one expired meanwhile)."""
        leased = self._leased(job.work_id, job.iterations, job.body)
        self.queue.append(leased)
        return leased

    def _fail(self, call: str) -> None:
        if self.errors[call]:
            raise self.errors[call].popleft()

    async def lease(self, max_jobs: int, wait_s: float) -> tuple[float, list[LeasedJob]]:
        self.events.append(("lease", self.url))
        self.lease_waits.append(wait_s)
        await asyncio.sleep(0)
        if self.down:
            raise http.Unavailable(f"{self.url}: connection refused", not_done=True)
        self._fail("lease")
        if not self.queue:
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), wait_s)
        jobs = [self.queue.popleft() for _ in range(min(max_jobs, len(self.queue)))]
        self.events.append(("leased", self.url, len(jobs), bool(self.queue)))
        return Leased(self.lease_s, jobs, bool(self.queue))

    def _ours(self, work_id: str, lease_id: str) -> bool:
        """Whether the entry names the lease this server handed out for the job."""
        if lease_id not in self.lease_ids.get(work_id, ()):
            self.foreign.append(work_id)
            return False
        return True

    async def complete(self, results: list[Report], failures: list[Report], stats: dict[str, Any]) -> int:
        self.complete_started.set()
        if self.block_complete is not None:
            await self.block_complete.wait()
        self._fail("complete")
        accepted = 0
        for work_id, lease_id, digest in results:
            if self._ours(work_id, lease_id) and work_id not in self.completed:
                self.completed[work_id] = digest
                accepted += 1
        self.failures.update((w, error) for w, lease_id, error in failures if self._ours(w, lease_id))
        self.complete_calls.append(len(results) + len(failures))
        await asyncio.sleep(0)  # the answer's trip back
        return accepted

    async def heartbeat(self, held: list[Held], stats: dict[str, Any]) -> list[str]:
        self.heartbeats.append([w for w, lease_id in held if self._ours(w, lease_id)])
        await asyncio.sleep(0)
        self._fail("heartbeat")
        # what the service answers: the work id of each named lease that is not current
        lost = [(w, lease_id) for w, lease_id in held if w in self.lost or lease_id in self.lost_leases]
        if lost:
            self.lost_told.set()
        return lost

    async def release(self, held: list[Held], stats: dict[str, Any]) -> None:
        self.released += [w for w, lease_id in held if self._ours(w, lease_id)]
        self.released_event.set()
        await asyncio.sleep(0)


class Hasher:
    """native.reference as a batch function; records what it hashed; may block or raise."""

    def __init__(self, *, gate: threading.Event | None = None, error: Exception | None = None) -> None:
        self.gate = gate
        self.error = error
        self.hashed: list[bytes] = []
        self.entered = threading.Event()
        self.left = threading.Event()

    def __call__(self, jobs: Sequence[tuple[bytes, int]]) -> list[bytes]:
        self.entered.set()
        try:
            if self.gate is not None:
                assert self.gate.wait(10.0), "the test never opened the gate"
            if self.error is not None:
                raise self.error
            self.hashed += [body for body, _ in jobs]
            return [chain(body, iterations) for body, iterations in jobs]
        finally:
            self.left.set()


def make_worker(
    hasher: Hasher, servers: Sequence[str] = (OWN,), *, lanes: int = 1, feed: Any = None, **settings: Any
) -> Worker:
    settings = {"threads": 1, "idle_exit_s": 0.0, "lease_wait_s": 0.05, "drain_timeout_s": 10.0, **settings}
    settings.setdefault("worker_id", "w1")
    return Worker(WorkerSettings(server=list(servers), **settings), "t" * 16, hasher=hasher, lanes=lanes, feed=feed)


async def run_until(worker: Worker, clients: list[FakeServer], done, what: str) -> int:
    """Run the worker until done() holds, then stop it; its exit code."""
    task = asyncio.ensure_future(worker.run(clients))
    await until(lambda: done() or task.done(), 8.0, what)
    assert not task.done(), "the worker exited before " + what
    worker.stop("test over")
    return await asyncio.wait_for(task, 8.0)


@aio
async def test_results_go_to_the_owning_server_in_batches_with_the_right_digests():
    own, peer = FakeServer(OWN), FakeServer(PEER)
    own.add(16)
    peer.add(4, iterations=3)
    worker = make_worker(Hasher(), [OWN, PEER], lanes=4)
    code = await run_until(
        worker, [own, peer], lambda: len(own.completed) == 16 and len(peer.completed) == 4, "every result"
    )
    assert code == 0
    assert own.completed == own.expected and peer.completed == peer.expected
    assert own.foreign == [] and peer.foreign == [] and own.failures == {}
    assert len(own.complete_calls) < 16 and max(own.complete_calls) > 1  # reported in batches
    assert worker.completed == 20 and worker.jobs_per_s > 0 and worker.cost_per_s > 0


def peer_leases_while_own_busy(events: list[tuple[Any, ...]], *, from_start: bool) -> list[int]:
    """Indices of peer lease calls made while the own server's last answer said it had more
    queued (or, from_start, before the own server answered at all)."""
    bad, own_more = [], None
    for i, event in enumerate(events):
        if event[:2] == ("leased", OWN):
            own_more = event[3]
        elif event == ("lease", PEER) and ((own_more is None and from_start) or own_more):
            bad.append(i)
    return bad


@aio
async def test_a_job_leased_while_long_chains_are_hashed_joins_their_feed_and_is_reported_first():
    if native.lanes() == 1:
        pytest.skip("one lane: a job waits for the job in it")
    own = FakeServer(OWN)
    chains = own.add(2, iterations=3_000_000, digest=native.chain)
    worker = make_worker(Hasher(), lanes=native.lanes(), feed=native.Feed)
    task = asyncio.ensure_future(worker.run([own]))
    try:
        await until(lambda: set(worker.running) == set(chains), 8.0, "both chains on the lanes")
        (short,) = own.add(1, iterations=SLOW)
        await until(lambda: short in own.completed, 30.0, "the short job's result")
        assert not set(chains) & set(own.completed), "the short job waited for the long chains"
        await until(lambda: len(own.completed) == 3, 120.0, "the chains' results")
    finally:
        worker.stop("test over")
        assert await asyncio.wait_for(task, 30.0) == 0
    assert own.completed == own.expected and own.failures == {}


@aio
async def test_the_peer_is_leased_only_while_the_own_server_is_idle():
    events: list[tuple[Any, ...]] = []
    own, peer = FakeServer(OWN, events), FakeServer(PEER, events)
    own.add(12)
    peer.add(12)
    worker = make_worker(Hasher(), [OWN, PEER], lanes=2)
    await run_until(worker, [own, peer], lambda: len(own.completed) + len(peer.completed) == 24, "every result")
    assert any(e[:2] == ("leased", OWN) and e[2] > 0 for e in events)
    assert peer_leases_while_own_busy(events, from_start=False) == []


@aio
async def test_the_peers_work_flows_as_soon_as_the_own_server_has_nothing_more_queued():
    events: list[tuple[Any, ...]] = []
    own, peer = FakeServer(OWN, events), FakeServer(PEER, events)
    own.add(3)  # fewer than the worker asks for: the answer says nothing more is queued
    peer.add(5)
    # A long-poll on the drained own server would hold the peer's work back for a minute.
    worker = make_worker(Hasher(), [OWN, PEER], lanes=4, lease_wait_s=60.0)
    await run_until(worker, [own, peer], lambda: len(own.completed) + len(peer.completed) == 8, "every result")
    assert own.completed == own.expected and peer.completed == peer.expected
    assert ("leased", OWN, 3, False) in events
    assert peer_leases_while_own_busy(events, from_start=True) == []


@aio
async def test_a_starting_worker_asks_its_own_server_first():
    events: list[tuple[Any, ...]] = []
    own, peer = FakeServer(OWN, events), FakeServer(PEER, events)
    own.add(4)
    peer.add(4)
    worker = make_worker(Hasher(), [OWN, PEER])
    await run_until(worker, [own, peer], lambda: len(own.completed) + len(peer.completed) == 8, "every result")
    assert peer_leases_while_own_busy(events, from_start=True) == []
    # the own server answers at once until it says it has nothing queued; only then a long-poll
    said_more = [e[3] for e in events if e[:2] == ("leased", OWN)]
    assert own.lease_waits[0] == 0.0 and said_more[0]  # 4 queued, 2 asked for
    assert own.lease_waits[1:] == [0.0 if more else 0.05 for more in said_more[: len(own.lease_waits) - 1]]
    assert 0.05 in own.lease_waits


@aio
async def test_the_peers_work_flows_while_the_own_server_is_unreachable():
    own, peer = FakeServer(OWN), FakeServer(PEER)
    own.down = True
    peer.add(3)
    worker = make_worker(Hasher(), [OWN, PEER])
    assert await run_until(worker, [own, peer], lambda: len(peer.completed) == 3, "the peer's results") == 0
    assert peer.completed == peer.expected


@aio
async def test_a_hasher_exception_is_reported_as_failures():
    own = FakeServer(OWN)
    ids = own.add(3)
    worker = make_worker(Hasher(error=RuntimeError("kernel fault")))
    assert await run_until(worker, [own], lambda: len(own.failures) == 3, "three failures") == 0
    assert own.failures == dict.fromkeys(ids, "RuntimeError: kernel fault")
    assert own.completed == {}


@aio
async def test_leases_reported_lost_are_not_started():
    own = FakeServer(OWN, lease_s=0.3)  # a short lease: the worker heartbeats at once, then every 0.1 s
    first, second = own.add(2, iterations=SLOW)
    own.lost.add(second)
    gate = threading.Event()
    hasher = Hasher(gate=gate)
    worker = make_worker(hasher)
    task = asyncio.ensure_future(worker.run([own]))
    try:
        await asyncio.wait_for(own.lost_told.wait(), 8.0)  # the first job runs (held at the gate) meanwhile
    finally:
        gate.set()
    await until(lambda: first in own.completed, 8.0, "the first result")
    worker.stop("test over")
    assert await asyncio.wait_for(task, 8.0) == 0
    assert own.completed == {first: own.expected[first]}
    assert hasher.hashed == [b"own-body-1"]
    assert second not in own.released  # no longer this worker's to give back


@aio
async def test_a_job_held_again_under_a_new_lease_survives_the_old_lease_reported_lost():
    own = FakeServer(OWN, lease_s=0.3)
    own.add(2, iterations=SLOW)  # hashed first, together (two lanes), held at the gate
    (job,) = own.add(1)
    stale = own.queue[-1]
    own.lost_leases.add(stale.lease_id)
    own.again(stale)  # the worker holds the job twice: under the lost lease and a current one
    gate = threading.Event()
    worker = make_worker(Hasher(gate=gate), lanes=2)
    task = asyncio.ensure_future(worker.run([own]))
    try:
        await asyncio.wait_for(own.lost_told.wait(), 8.0)
    finally:
        gate.set()
    await until(lambda: len(own.completed) >= 2 and worker.held == 0, 8.0, "the gated batch done")
    worker.stop("test over")
    assert await asyncio.wait_for(task, 8.0) == 0
    assert job in own.completed


@aio
async def test_stop_releases_unstarted_jobs_and_reports_running_ones():
    own = FakeServer(OWN)
    first, second = own.add(2, iterations=SLOW)
    gate = threading.Event()
    hasher = Hasher(gate=gate)
    worker = make_worker(hasher)
    task = asyncio.ensure_future(worker.run([own]))
    try:
        assert await asyncio.to_thread(hasher.entered.wait, 8.0)
        worker.stop("SIGTERM")
        worker.stop("SIGTERM again")  # idempotent
        await asyncio.wait_for(own.released_event.wait(), 8.0)
        assert own.released == [second] and own.completed == {}
    finally:
        gate.set()
    assert await asyncio.wait_for(task, 8.0) == 0
    assert own.completed == {first: own.expected[first]}
    assert len(hasher.hashed) == 1 and not worker.abandoned_hashing


@aio
async def test_a_job_still_running_after_the_drain_timeout_is_released():
    own = FakeServer(OWN)
    first, second = own.add(2, iterations=SLOW)
    gate = threading.Event()
    hasher = Hasher(gate=gate)
    worker = make_worker(hasher, drain_timeout_s=0.2)
    task = asyncio.ensure_future(worker.run([own]))
    try:
        assert await asyncio.to_thread(hasher.entered.wait, 8.0)
        worker.stop("SIGTERM")
        assert await asyncio.wait_for(task, 8.0) == 0
    finally:
        gate.set()
        assert await asyncio.to_thread(hasher.left.wait, 8.0)  # leave no thread behind
    assert own.released == [second, first]
    assert own.completed == {} and worker.abandoned_hashing


@aio
async def test_an_idle_worker_exits_after_idle_exit_s():
    own = FakeServer(OWN)
    worker = make_worker(Hasher(), idle_exit_s=0.3)
    started = time.monotonic()
    assert await asyncio.wait_for(worker.run([own]), 8.0) == 0
    assert time.monotonic() - started >= 0.3
    assert own.heartbeats  # an idle worker still tells its own server it is alive


@pytest.mark.parametrize("call", ["lease", "heartbeat", "complete"])
@aio
async def test_unauthorized_is_fatal(call):
    own = FakeServer(OWN)
    own.add(2)
    own.errors[call].append(http.Unauthorized("HTTP 401: authentication required", status=401))
    worker = make_worker(Hasher())
    assert await asyncio.wait_for(worker.run([own]), 8.0) == 1


@aio
async def test_a_batch_refused_with_unavailable_is_sent_again():
    own = FakeServer(OWN)
    own.add(4)
    for _ in range(2):
        own.errors["complete"].append(http.Unavailable("HTTP 503: busy", status=503, not_done=True))
    worker = make_worker(Hasher())
    assert await run_until(worker, [own], lambda: len(own.completed) == 4, "every result") == 0
    assert own.completed == own.expected
    assert not own.errors["complete"]  # both failures were met, and the batch still arrived


@aio
async def test_a_report_in_flight_when_the_worker_stops_is_not_lost():
    own = FakeServer(OWN)
    (work_id,) = own.add(1)
    own.block_complete = asyncio.Event()  # the first report hangs (a slow network) ...
    worker = make_worker(Hasher())
    task = asyncio.ensure_future(worker.run([own]))
    await asyncio.wait_for(own.complete_started.wait(), 8.0)
    own.block_complete = None  # ... later ones go through
    worker.stop("SIGTERM")
    assert await asyncio.wait_for(task, 8.0) == 0
    assert own.completed == {work_id: own.expected[work_id]}


@aio
async def test_results_that_finish_while_a_report_is_on_its_way_are_sent_next_without_a_back_off(monkeypatch):
    backoffs: list[float] = []

    async def never_wake(self: Backoff) -> None:  # a back-off here would hold the results for good
        backoffs.append(self.delay)
        await asyncio.Event().wait()

    monkeypatch.setattr(Backoff, "sleep", never_wake)
    own = FakeServer(OWN)
    own.add(1)
    own.block_complete = asyncio.Event()  # the first report is slow to answer ...
    worker = make_worker(Hasher())
    task = asyncio.ensure_future(worker.run([own]))
    await asyncio.wait_for(own.complete_started.wait(), 8.0)
    own.add(3)  # ... while three more jobs are leased and hashed
    await until(lambda: len(worker.done[OWN]) == 3, 8.0, "three results waiting behind the report")
    own.block_complete.set()
    await until(lambda: len(own.completed) == 4, 8.0, "every result")
    worker.stop("test over")
    assert await asyncio.wait_for(task, 8.0) == 0
    assert own.completed == own.expected
    assert own.complete_calls == [1, 3]
    assert backoffs == []
