"""The work function in plain Python (hashlib): the reference every test, benchmark and the CLI's
--verify check results against. Slow; the C kernels are what workers run. The server hashes its
tiniest jobs with it on its event loop, where holding the GIL matters more (server/arrival.py)."""

from __future__ import annotations

import hashlib


def chain(body: bytes, iterations: int) -> bytes:
    """sha512(body), then iterations-1 more times sha512 of the previous raw 64-byte digest."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    sha512 = hashlib.sha512
    out = sha512(body).digest()
    for _ in range(iterations - 1):
        out = sha512(out).digest()
    return out
