"""Hashing on arrival, off the event loop and in SIMD lanes (see Service.enqueue for which jobs).

A job cheap enough (ON_LOOP_MAX) is hashed on the event loop, where a thread hand-off would cost
more, with hashlib (native.reference): it keeps the GIL for such small inputs, while the C kernel
would let it go, and the store's writer thread, waiting for it, would take it and make the event
loop wait in turn (a convoy: 64-byte jobs cost the loop 60 us each with the C kernel, 36 with
hashlib). A dearer one goes to this server's one hashing thread, which costs the event loop, the
busiest thread of a loaded server, a few microseconds instead of the whole hash.
The thread hashes in batches through a `native.Feed`: a body that arrives while a batch is hashed
joins it, in the next free SIMD lane, up to MAX_BATCH_JOBS; past that it waits for the next batch.
Each job is answered as soon as its lane is done: the thread publishes its digest and writes an
eventfd that wakes the event loop, so a job does not wait for the longest one in its batch (and
its client can send the next one sooner, which keeps the lanes fuller).
So under load the lanes stay full (sixteen 256 KB bodies with AVX-512 in about the time of five
one after another), and a body that came alone, hashed in scalar, moves to the lanes as soon as
others come (with whole batches, a tenth of a mixed load's bodies were hashed alone, at a quarter
of the lanes' speed).
"""

from __future__ import annotations

import asyncio
import concurrent.futures

import native
from common.cost import compressions
from common.feedwake import FeedWake
from native import reference
from server.errors import Unavailable

MAX_BATCH_JOBS = 32  # so the first of a burst is not held back by many behind it
ON_LOOP_MAX = 16  # compressions (~3 us): bodies under 2 KB, where hashlib keeps the GIL


class ArrivalHasher:
    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="arrival-hash")
        self._waiting: list[tuple[list[bytes], int, asyncio.Future[bytes]]] = []
        self._batches: asyncio.Task[None] | None = None
        self._batch: _Batch | None = None  # the batch being hashed, while it takes more
        self.batches = 0  # batches hashed in the thread so far
        self.joined = 0  # jobs that joined a batch already being hashed
        self.in_thread = 0  # jobs hashed in the thread, in batches (joined ones too)
        self.on_loop = 0  # jobs cheap enough to hash on the event loop

    async def chain(self, pieces: list[bytes], iterations: int) -> bytes:
        """native.chain of the body in these pieces, computed where it costs least."""
        if compressions(iterations, sum(map(len, pieces))) <= ON_LOOP_MAX:
            self.on_loop += 1
            return reference.chain(b"".join(pieces), iterations)  # under 2 KB
        self.in_thread += 1
        done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        if self._batch is not None and self._batch.feed.push(pieces, iterations) is not None:
            self._batch.done.append(done)
            self.joined += 1
        else:
            self._waiting.append((pieces, iterations, done))
            if self._batches is None:
                self._batches = asyncio.create_task(self._run_batches(), name="arrival-hash")
        return await done

    async def _run_batches(self) -> None:
        wake = FeedWake.open(asyncio.get_running_loop(), self._deliver_published)
        running: concurrent.futures.Future[list[bytes]] | None = None
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_BATCH_JOBS], self._waiting[MAX_BATCH_JOBS:]
                feed = native.Feed(MAX_BATCH_JOBS)
                for body, iterations, _ in batch:
                    feed.push(body, iterations)  # a new feed with room for them all takes them
                if wake is not None:
                    feed.notify(wake.fd)
                # chain() pushes to the feed and adds to this list until the run closes it
                self._batch = _Batch(feed, [done for *_, done in batch])
                self.batches += 1
                try:
                    running = self._pool.submit(feed.run)
                    await asyncio.wrap_future(running)
                except Exception as exc:  # noqa: BLE001  (each waiting enqueue answers 503: none is left hanging)
                    self._refuse_batch(Unavailable(f"could not hash the job: {type(exc).__name__}", retry_after_s=1))
                    continue
                finally:
                    finished, self._batch = self._batch, None
                finished.deliver()  # what the run did not announce on its way
        finally:
            self._batches = None
            if wake is not None:
                wake.close(running)

    def _deliver_published(self) -> None:
        if self._batch is not None:
            self._batch.deliver()

    def _refuse_batch(self, failed: Exception) -> None:
        assert self._batch is not None
        for done in self._batch.done:
            if not done.done():
                done.set_exception(failed)

    def close(self) -> None:
        """Let the thread go once it has finished what it was given (the server is closing)."""
        self._pool.shutdown(wait=False)


class _Batch:
    """A feed being hashed and its jobs' futures, in push order; each job's result is set as soon
    as the run publishes it, so a short job does not wait for the longest one in its batch."""

    def __init__(self, feed: native.Feed, done: list[asyncio.Future[bytes]]) -> None:
        self.feed = feed
        self.done = done
        self.delivered = 0

    def deliver(self) -> None:
        published = self.feed.finished(self.delivered)
        self.delivered += len(published)
        for index, digest in published:
            if not self.done[index].done():
                self.done[index].set_result(digest)
