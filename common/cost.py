"""The cost of a job, in the units the worker reports its speed in and the autoscaler plans with.

A job costs the SHA-512 compressions it needs (its iterations, plus one per 128-byte block of its
body for the first hash) plus a fixed per-job overhead, so a backlog of many tiny jobs is not
mistaken for no work.
"""

from __future__ import annotations

#: cost units charged per job on top of its hashing (round trips, bookkeeping): ~0.2 ms of a worker
JOB_OVERHEAD_COST = 1000

#: compressions cheap enough (~0.1 ms of one core) to hash on an event loop, where a thread hop
#: would cost more: the worker's inline batches; also the server's default --hash-on-arrival, in
#: iterations after the body's hash
ON_LOOP_MAX_COMPRESSIONS = 512


def compressions(iterations: int, body_bytes: int) -> int:
    """SHA-512 block compressions a job needs (about; the padding block is not counted)."""
    return iterations + (body_bytes + 127) // 128


def job_cost(iterations: int, body_bytes: int) -> int:
    return compressions(iterations, body_bytes) + JOB_OVERHEAD_COST
