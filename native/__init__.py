"""Iterated SHA-512 in C: `out = sha512(body)`, then `iterations - 1` times `out = sha512(out)`.

A thin wrapper over the cffi module `native._sha512chain`; every C call releases the GIL, so one
thread per core gives real parallelism. `chain_many` runs independent chains side by side in SIMD
lanes when the CPU has them (AVX-512: 16 lanes, AVX2: 4), else one after another; the last few
chains of a batch finish on a narrower kernel (AVX-512's last 2 to 8 on one group of 8 lanes, a
lone one in scalar) instead of computing empty lanes.

The backend is picked once at import: the best one the CPU supports whose kernel passes a quick
known-answer self-test, or the one named by `DYNWORK_HASH_BACKEND=scalar|avx2|avx512` (for tests
and benchmarks), or later by `use_backend`. Naming a backend this CPU cannot run raises rather
than silently running something else, so `backend()` always tells the truth. `chain` always uses
the scalar kernel: one chain cannot fill vector lanes. Backend names and the digest size come from
the C header. `native.reference` is the same function in plain Python (hashlib).

`Feed` is a batch that takes more jobs while it runs: one thread runs it, another pushes jobs,
and each pushed job takes the next free lane at once instead of waiting for the next batch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from native._sha512chain import ffi, lib

__all__ = [
    "BACKENDS",
    "DIGEST_SIZE",
    "Feed",
    "available_backends",
    "backend",
    "chain",
    "chain_many",
    "lanes",
    "use_backend",
]

BACKENDS: tuple[str, ...] = tuple(ffi.string(lib.dw_backend_name(i)).decode() for i in range(lib.DW_BACKEND_COUNT))
DIGEST_SIZE: int = lib.DW_DIGEST_SIZE
ENV_BACKEND = "DYNWORK_HASH_BACKEND"
_MAX_ITERATIONS = 2**64 - 1

Buffer = bytes | bytearray | memoryview
Body = Buffer | list[bytes]  # a list: the pieces a body came in, hashed as one


def available_backends() -> list[str]:
    """The backends this CPU can run, slowest first."""
    return [name for i, name in enumerate(BACKENDS) if lib.dw_backend_supported(i)]


def backend() -> str:
    """The backend `chain_many` uses."""
    return BACKENDS[int(lib.dw_current_backend())]


def lanes() -> int:
    """How many chains the current backend computes side by side."""
    return int(lib.dw_backend_lanes(lib.dw_current_backend()))


def use_backend(name: str) -> None:
    """Switch `chain_many` to the named backend. Not thread-safe: call it before hashing starts.

    Raises ValueError for an unknown name, RuntimeError when this CPU cannot run it."""
    if name not in BACKENDS:
        raise ValueError(f"unknown hash backend {name!r}; expected one of {', '.join(BACKENDS)}")
    status = lib.dw_select_backend(BACKENDS.index(name))
    if status == -1:
        reason = "is not supported by this CPU (or build)"
    elif status == -2:
        reason = "failed its known-answer self-test on this CPU"
    else:
        return
    raise RuntimeError(f"hash backend {name!r} {reason}; available: {', '.join(available_backends())}")


def _check_iterations(iterations: object) -> int:
    if isinstance(iterations, bool) or not isinstance(iterations, int):
        raise TypeError(f"iterations must be an int, not {type(iterations).__name__}")
    if not 1 <= iterations <= _MAX_ITERATIONS:
        raise ValueError(f"iterations must be between 1 and {_MAX_ITERATIONS}, got {iterations}")
    return iterations


def _buffer(data: object) -> Any:
    if isinstance(data, str):
        raise TypeError("data must be bytes-like, not str")
    try:
        return ffi.from_buffer("uint8_t[]", data)
    except TypeError:
        raise TypeError(f"data must be bytes-like, not {type(data).__name__}") from None


def chain(data: bytes, iterations: int) -> bytes:
    """The 64-byte digest after `iterations` SHA-512 steps over `data` (scalar kernel)."""
    _check_iterations(iterations)
    buf = _buffer(data)
    out = ffi.new("uint8_t[]", DIGEST_SIZE)
    lib.dw_chain(buf, len(buf), iterations, out)
    return bytes(ffi.buffer(out))


def chain_many(jobs: Sequence[tuple[bytes | bytearray | memoryview, int]]) -> list[bytes]:
    """`chain` for every `(data, iterations)` job, computed together on the calling thread."""
    n = len(jobs)
    if n == 0:
        return []
    keep = []  # the from_buffer objects must outlive the C call
    ptrs = ffi.new("const uint8_t *[]", n)
    lens = ffi.new("size_t[]", n)
    iters = ffi.new("uint64_t[]", n)
    for i, job in enumerate(jobs):
        try:
            data, iterations = job
        except (TypeError, ValueError):
            raise TypeError(f"job {i} must be a (data, iterations) pair") from None
        iters[i] = _check_iterations(iterations)
        buf = _buffer(data)
        keep.append(buf)
        ptrs[i] = buf
        lens[i] = len(buf)
    out = ffi.new("uint8_t[]", DIGEST_SIZE * n)
    lib.dw_chain_many(n, ptrs, lens, iters, out)
    return _digests(out, n)


def _digests(out: Any, n: int) -> list[bytes]:
    """The n 64-byte digests at `out`, one bytes object each."""
    raw = ffi.buffer(out, DIGEST_SIZE * n)
    return [raw[DIGEST_SIZE * i : DIGEST_SIZE * (i + 1)] for i in range(n)]


class Feed:
    """Up to `capacity` jobs hashed together, more of them pushed while they are hashed.

    One thread calls `run` (once: it hashes every job pushed before it and while it runs, without
    the GIL, and closes the feed when it finds none left); one other thread may `push` meanwhile.
    A push after the close, or past the capacity, is refused (None): the job goes elsewhere.
    """

    def __init__(self, capacity: int) -> None:
        feed = lib.dw_feed_new(capacity) if capacity >= 1 else ffi.NULL
        if feed == ffi.NULL:
            raise ValueError(f"cannot make a feed of {capacity} jobs")
        self._feed = ffi.gc(feed, lib.dw_feed_free)
        self._keep: list[Any] = []  # each job's from_buffer object, by index, until the job is done
        self.capacity = capacity
        # Fixed for the feed's life, taken once: cffi releases the GIL around every C call, and
        # `finished` runs on a busy event loop that then waits to get it back.
        self._order = lib.dw_feed_finish_order(feed)
        self._out = ffi.buffer(lib.dw_feed_digests(feed), DIGEST_SIZE * capacity)

    def push(self, data: Body, iterations: int) -> int | None:
        """Adds a job; its index among the feed's jobs, or None when the feed is full or closed.

        A body that came in pieces may be given as their list: it is hashed as their concatenation
        without being joined (a 256 KB body would cost a 256 KB copy)."""
        _check_iterations(iterations)
        if isinstance(data, list) and len(data) <= 1:  # nothing to gather: no array of pieces
            data = data[0] if data else b""
        if isinstance(data, list):
            keep: Any = [_buffer(piece) for piece in data]
            parts = ffi.new("dw_part[]", len(keep))
            for part, buf in zip(parts, keep, strict=True):
                part.data = buf
                part.len = len(buf)
            keep.append(parts)
            self._keep.append(keep)  # before the push: the run may read them at once
            index = int(lib.dw_feed_push_parts(self._feed, parts, len(parts), iterations))
        else:
            buf = _buffer(data)
            self._keep.append(buf)
            index = int(lib.dw_feed_push(self._feed, buf, len(buf), iterations))
        if index < 0:
            self._keep.pop()
            return None
        return index

    def run(self) -> list[bytes]:
        """Hashes the jobs until none is left and closes the feed; their digests, in push order."""
        n = lib.dw_feed_run(self._feed)
        return _digests(lib.dw_feed_digests(self._feed), n)

    def notify(self, fd: int) -> None:
        """Before the run: it writes an 8-byte 1 to `fd` (an eventfd, open until the run returns)
        when a job is done and none was since the last call to `finished`."""
        lib.dw_feed_notify(self._feed, fd)

    def finished(self, start: int = 0) -> list[tuple[int, bytes]]:
        """The jobs done so far, from the start-th done on, as (index, digest), in the order they
        were done; from the pushing thread while the run goes on, or after it."""
        n = int(lib.dw_feed_finished(self._feed))
        done = [int(self._order[i]) for i in range(start, n)]
        for j in done:  # a done job's body is read no more: a long run need not keep every body
            self._keep[j] = None
        raw = self._out
        return [(j, raw[DIGEST_SIZE * j : DIGEST_SIZE * (j + 1)]) for j in done]


def _select_at_import() -> None:
    forced = os.environ.get(ENV_BACKEND, "").strip().lower()
    if not forced:
        lib.dw_current_backend()  # pick (and self-test) the best kernel now, not mid-run
        return
    try:
        use_backend(forced)
    except (ValueError, RuntimeError) as exc:
        raise ImportError(f"{ENV_BACKEND}={forced}: {exc}") from None


_select_at_import()
