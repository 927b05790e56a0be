"""What the worker's hashing threads run: a `native.Feed`, or the same contract over a function
that hashes a whole list of jobs at once (`BatchFeed`: tests, or any hasher without lanes).

A feed takes jobs while it runs: a job leased while a long one is hashed joins the run in the
next free lane instead of waiting for the long one to finish, and each job's digest can be taken
as soon as it is done.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

Job = tuple[bytes | memoryview, int]  # (body, iterations)
Hasher = Callable[[Sequence[Job]], list[bytes]]


class Feed(Protocol):
    """native.Feed as the worker uses it (see its docstrings for the contract)."""

    def push(self, data: bytes | memoryview, iterations: int) -> int | None: ...

    def run(self) -> list[bytes]: ...

    def notify(self, fd: int) -> None: ...

    def finished(self, start: int = 0) -> list[tuple[int, bytes]]: ...


class BatchFeed:
    """A feed over a batch hasher: `run` hashes what was pushed, then what was pushed meanwhile,
    round after round until one finds nothing new (then the feed is closed). The jobs of one round
    are done together; a hasher's exception ends the run and leaves the rest of them not done."""

    def __init__(self, hasher: Hasher, capacity: int) -> None:
        self._hasher = hasher
        self.capacity = capacity
        self._lock = threading.Lock()
        self._jobs: list[Job] = []
        self._digests: list[bytes] = []  # of the jobs done, in push order (rounds go in order)
        self._closed = False
        self._fd: int | None = None

    def push(self, data: bytes | memoryview, iterations: int) -> int | None:
        with self._lock:
            if self._closed or len(self._jobs) >= self.capacity:
                return None
            self._jobs.append((data, iterations))
            return len(self._jobs) - 1

    def notify(self, fd: int) -> None:
        self._fd = fd

    def run(self) -> list[bytes]:
        try:
            while True:
                with self._lock:
                    start = len(self._digests)
                    round_ = self._jobs[start:]
                    if not round_:
                        self._closed = True
                        return list(self._digests)
                digests = self._hasher(round_)
                if len(digests) != len(round_):
                    raise ValueError(f"the hasher gave {len(digests)} digests for {len(round_)} jobs")
                with self._lock:
                    self._digests += digests
                if self._fd is not None:
                    with contextlib.suppress(OSError):
                        os.eventfd_write(self._fd, 1)
        finally:
            with self._lock:
                self._closed = True

    def finished(self, start: int = 0) -> list[tuple[int, bytes]]:
        with self._lock:
            return [(i, self._digests[i]) for i in range(start, len(self._digests))]
