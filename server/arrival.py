"""Hashing on arrival, off the event loop and in SIMD lanes (see Service.enqueue for which jobs).

A job cheap enough (ON_LOOP_MAX) is hashed on the event loop, where a thread hand-off would cost
more, with hashlib (native.reference): it keeps the GIL for such small inputs, while the C kernel
would let it go, and the store's writer thread, waiting for it, would take it and make the event
loop wait in turn (a convoy: 64-byte jobs cost the loop 60 us each with the C kernel, 36 with
hashlib). A dearer one goes to this server's one hashing thread, which costs the event loop, the
busiest thread of a loaded server, a few microseconds instead of the whole hash.
The thread hashes in batches through a `native.Feed`: a body that arrives while a batch is hashed
joins it, in the next free SIMD lane, up to MAX_BATCH_JOBS; past that it waits for the next batch.
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
from native import reference
from server.errors import Unavailable

MAX_BATCH_JOBS = 32  # so the first of a burst is not held back by many behind it
ON_LOOP_MAX = 16  # compressions (~3 us): bodies under 2 KB, where hashlib keeps the GIL


class ArrivalHasher:
    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="arrival-hash")
        self._waiting: list[tuple[bytes, int, asyncio.Future[bytes]]] = []
        self._batches: asyncio.Task[None] | None = None
        self._feed: native.Feed | None = None  # the batch being hashed, while it takes more
        self._feed_done: list[asyncio.Future[bytes]] = []  # its jobs' futures, in push order
        self.batches = 0  # batches hashed in the thread so far
        self.joined = 0  # jobs that joined a batch already being hashed

    async def chain(self, body: bytes, iterations: int) -> bytes:
        """native.chain(body, iterations), computed where it costs least."""
        if compressions(iterations, len(body)) <= ON_LOOP_MAX:
            return reference.chain(body, iterations)
        done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        if self._feed is not None and self._feed.push(body, iterations) is not None:
            self._feed_done.append(done)
            self.joined += 1
        else:
            self._waiting.append((body, iterations, done))
            if self._batches is None:
                self._batches = asyncio.create_task(self._run_batches(), name="arrival-hash")
        return await done

    async def _run_batches(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_BATCH_JOBS], self._waiting[MAX_BATCH_JOBS:]
                feed = native.Feed(MAX_BATCH_JOBS)
                for body, iterations, _ in batch:
                    feed.push(body, iterations)  # a new feed with room for them all takes them
                # chain() pushes to the feed and adds to this list until the run closes it
                self._feed, self._feed_done = feed, [done for *_, done in batch]
                self.batches += 1
                try:
                    digests = await loop.run_in_executor(self._pool, feed.run)
                except Exception as exc:  # noqa: BLE001  (each waiting enqueue answers 503: none is left hanging)
                    self._refuse_batch(Unavailable(f"could not hash the job: {type(exc).__name__}", retry_after_s=1))
                    continue
                finally:
                    self._feed = None
                for done, digest in zip(self._feed_done, digests, strict=True):
                    if not done.done():
                        done.set_result(digest)
        finally:
            self._batches = None

    def _refuse_batch(self, failed: Exception) -> None:
        for done in self._feed_done:
            if not done.done():
                done.set_exception(failed)

    def close(self) -> None:
        """Let the thread go once it has finished what it was given (the server is closing)."""
        self._pool.shutdown(wait=False)
