"""The server's hashing on arrival (server/arrival.py): cheap jobs on the event loop, dearer ones
in one thread, batched through a native.Feed so bodies arriving together share the SIMD lanes,
and bodies arriving while a batch is hashed join it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Iterator

import pytest

import native
from common.cost import compressions
from server.arrival import MAX_BATCH_JOBS, ON_LOOP_MAX, ArrivalHasher
from server.errors import Unavailable
from tests.native_support import reference as chain
from tests.unit.support import aio


@contextlib.contextmanager
def hashing() -> Iterator[ArrivalHasher]:
    hasher = ArrivalHasher()
    try:
        yield hasher
    finally:
        hasher.close()


@aio
async def test_bodies_arriving_together_are_hashed_in_batches_with_the_right_results():
    with hashing() as hasher:
        jobs = [(os.urandom(100_000 + i), 1 + i % 3) for i in range(MAX_BATCH_JOBS + 8)]
        assert all(compressions(n, len(b)) > ON_LOOP_MAX for b, n in jobs)
        digests = await asyncio.gather(*(hasher.chain([body], n) for body, n in jobs))
        assert digests == [chain(body, n) for body, n in jobs]
        assert hasher.batches == 2  # all arrived before the first batch started: a full one, then the rest
        assert await hasher.chain([b"x" * 9_000], 2) == chain(b"x" * 9_000, 2)  # a lone one later
        assert hasher.batches == 3


@aio
async def test_a_body_in_pieces_is_hashed_as_one_whatever_the_cuts():
    """A body comes in the pieces the socket gave it (server.web.read_pieces); the lanes read
    them in place and gather only the blocks that span two, on the event loop and in the thread."""
    with hashing() as hasher:
        body = os.urandom(200_003)
        cuts = [(65_536,), (1, 130_000), (127, 255, 70_001), (199_990, 200_002), (3, 5, 7, 100_000, 100_200)]
        pieces = [[body[a:b] for a, b in zip((0, *ends), (*ends, len(body)), strict=True)] for ends in cuts]
        assert await asyncio.gather(*(hasher.chain(p, n) for p in pieces for n in (1, 3))) == [
            chain(body, n) for _ in pieces for n in (1, 3)
        ]
        assert hasher.in_thread == 2 * len(cuts)
        small = os.urandom(1_500)
        assert await hasher.chain([small[:700], small[700:]], 2) == chain(small, 2)
        assert hasher.on_loop == 1


@aio
async def test_a_cheap_job_is_hashed_on_the_event_loop():
    with hashing() as hasher:
        body = bytes(1000)
        assert compressions(8, len(body)) <= ON_LOOP_MAX
        assert await hasher.chain([body], 8) == chain(body, 8)
        assert hasher.batches == 0


@aio
async def test_a_failed_batch_refuses_each_of_its_jobs_with_a_503_and_the_next_batch_works(monkeypatch):
    with hashing() as hasher:

        def broken(feed):
            raise MemoryError("injected")

        monkeypatch.setattr(native.Feed, "run", broken)
        body = bytes(100_000)
        results = await asyncio.gather(hasher.chain([body], 1), hasher.chain([body], 2), return_exceptions=True)
        assert [type(r) for r in results] == [Unavailable, Unavailable]
        assert all(r.status == 503 and "MemoryError" in r.message for r in results)
        monkeypatch.undo()
        assert await hasher.chain([body], 1) == chain(body, 1)


@aio
async def test_a_waiter_that_goes_away_does_not_stop_the_others():
    with hashing() as hasher:
        body = bytes(200_000)
        gone = asyncio.ensure_future(hasher.chain([body], 1))
        kept = asyncio.ensure_future(hasher.chain([body], 2))
        await asyncio.sleep(0)  # both are waiting now
        gone.cancel()
        assert await kept == chain(body, 2)
        with pytest.raises(asyncio.CancelledError):
            await gone


@aio
async def test_a_body_arriving_while_a_batch_is_hashed_joins_it_and_one_past_its_capacity_waits(monkeypatch):
    started, release = threading.Event(), threading.Event()
    real_run = native.Feed.run

    def held_run(feed):  # the batch is being hashed until the test lets it go
        started.set()
        release.wait(30)
        return real_run(feed)

    monkeypatch.setattr(native.Feed, "run", held_run)
    with hashing() as hasher:
        first = asyncio.ensure_future(hasher.chain([bytes(100_000)], 1))
        assert await asyncio.to_thread(started.wait, 30)
        later = [(os.urandom(50_000 + i), 1 + i % 2) for i in range(MAX_BATCH_JOBS)]
        pending = [asyncio.ensure_future(hasher.chain([body], n)) for body, n in later]
        await asyncio.sleep(0)  # each has pushed its body, or queued it for the next batch
        assert hasher.joined == MAX_BATCH_JOBS - 1  # the batch had room for all but one
        release.set()
        assert await first == chain(bytes(100_000), 1)
        assert await asyncio.gather(*pending) == [chain(body, n) for body, n in later]
        assert hasher.batches == 2  # the one that did not fit went in a batch of its own


@aio
async def test_a_short_job_is_answered_while_a_longer_one_in_its_batch_is_still_hashed():
    """Each job's result is set as soon as the hashing thread publishes it (an eventfd wakes the
    event loop), not when the whole batch is done: the short body here is answered while the long
    chain beside it (about half a second) still runs."""
    with hashing() as hasher:
        body = os.urandom(100_000)
        short = asyncio.ensure_future(hasher.chain([body], 1))  # first: a scalar-only CPU goes in push order
        long_chain = asyncio.ensure_future(hasher.chain([b"long"], 1_500_000))
        assert await short == chain(body, 1)
        assert not long_chain.done(), "the short job's result waited for the long one"
        assert await long_chain == native.chain(b"long", 1_500_000)
        assert hasher.batches == 1  # both in one batch


@aio
async def test_without_an_eventfd_to_watch_a_batch_is_answered_when_it_is_done(monkeypatch):
    """Where the loop cannot watch the eventfd, jobs still get their results, with the batch."""

    def no_readers(*args):
        raise NotImplementedError

    monkeypatch.setattr(asyncio.get_running_loop(), "add_reader", no_readers)
    with hashing() as hasher:
        jobs = [(os.urandom(60_000 + i), 1 + i) for i in range(5)]
        assert await asyncio.gather(*(hasher.chain([b], n) for b, n in jobs)) == [chain(b, n) for b, n in jobs]
