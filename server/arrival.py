"""Hashing on arrival, off the event loop and in SIMD lanes (see Service.enqueue for which jobs).

A job cheap enough (ON_LOOP_MAX) is hashed on the event loop, where a thread hand-off would cost
more, with hashlib (native.reference): it keeps the GIL for such small inputs, while the C kernel
would let it go, and the store's writer thread, waiting for it, would take it and make the event
loop wait in turn (a convoy: 64-byte jobs cost the loop 60 us each with the C kernel, 36 with
hashlib). A dearer one goes to this server's one hashing thread, which costs the event loop, the
busiest thread of a loaded server, a few microseconds instead of the whole hash.
The thread hashes in batches through `native.chain_many`: while one batch is hashed, the bodies
that arrive meanwhile wait and go together in the next, so under load they fill the SIMD lanes
(sixteen 256 KB bodies with AVX-512 in about the time of five one after another).
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
        self.batches = 0  # batches hashed in the thread so far

    async def chain(self, body: bytes, iterations: int) -> bytes:
        """native.chain(body, iterations), computed where it costs least."""
        if compressions(iterations, len(body)) <= ON_LOOP_MAX:
            return reference.chain(body, iterations)
        done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting.append((body, iterations, done))
        if self._batches is None:
            self._batches = asyncio.create_task(self._run_batches(), name="arrival-hash")
        return await done

    async def _run_batches(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_BATCH_JOBS], self._waiting[MAX_BATCH_JOBS:]
                jobs = [(body, iterations) for body, iterations, _ in batch]
                self.batches += 1
                try:
                    digests = await loop.run_in_executor(self._pool, native.chain_many, jobs)
                except Exception as exc:  # noqa: BLE001  (each waiting enqueue answers 503: none is left hanging)
                    failed = Unavailable(f"could not hash the job: {type(exc).__name__}", retry_after_s=1)
                    for *_, done in batch:
                        if not done.done():
                            done.set_exception(failed)
                    continue
                for (*_, done), digest in zip(batch, digests, strict=True):
                    if not done.done():
                        done.set_result(digest)
        finally:
            self._batches = None

    def close(self) -> None:
        """Let the thread go once it has finished what it was given (the server is closing)."""
        self._pool.shutdown(wait=False)
