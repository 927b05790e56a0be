"""The scaling decision as a pure function, so it can be tested and simulated with a fake clock.

Work is measured in cost units: a job costs its iterations plus one per 128-byte block of its
body plus a fixed per-job overhead, so a backlog of many tiny jobs is not mistaken for no work.
Workers report their speed in the same units.
"""
from __future__ import annotations

import dataclasses
import math

#: cost units charged per job on top of its hashing (round trips, bookkeeping): ~0.2 ms of a worker
JOB_OVERHEAD_COST = 1000


def job_cost(iterations: int, body_bytes: int) -> int:
    return iterations + (body_bytes + 127) // 128 + JOB_OVERHEAD_COST


@dataclasses.dataclass(frozen=True)
class PolicyParams:
    scale_up_wait_s: float = 2.0  # launch when the oldest queued job has waited this long
    target_drain_s: float = 30.0  # ... or when the backlog would take longer than this to drain


@dataclasses.dataclass(frozen=True)
class Observation:
    queued: int  # jobs waiting in this server's queue
    backlog_cost: int  # summed cost of those jobs
    oldest_wait_s: float  # age of the oldest queued job (0 when none)
    live: int  # this server's workers that are reporting
    starting: int  # launched by this server, not yet reporting (pending launches)
    allowed: int  # workers this server may have now: max_workers - lent + borrowed
    min_workers: int
    worker_rate: float  # cost units per second one worker achieves (measured, or a default)
    boot_s: float = 0.0  # expected seconds from launch to a worker taking work


def workers_wanted(obs: Observation, params: PolicyParams) -> int:
    """The fleet size this server wants now, before the `allowed` cap (so loans can be sized)."""
    have = obs.live + obs.starting
    if obs.queued == 0:
        return max(obs.min_workers, 0)
    rate = max(obs.worker_rate, 1.0)
    wanted = have
    # Projected drain: enough workers that the backlog clears within target_drain_s of their
    # arrival; workers still booting contribute nothing until boot_s has passed.
    usable_s = max(params.target_drain_s - obs.boot_s, params.target_drain_s / 4)
    if obs.backlog_cost / (rate * max(have, 1e-9)) > params.target_drain_s:
        wanted = max(wanted, math.ceil(obs.backlog_cost / (rate * usable_s)))
    # Latency: the oldest job has waited too long and nobody is on the way.
    if obs.oldest_wait_s >= params.scale_up_wait_s and obs.starting == 0:
        wanted = max(wanted, have + 1)
    # Never more new workers than there are queued jobs for them.
    wanted = min(wanted, have + obs.queued)
    return max(wanted, obs.min_workers)


def to_launch(obs: Observation, params: PolicyParams) -> int:
    """How many workers to launch now, within the allowed total."""
    wanted = min(workers_wanted(obs, params), obs.allowed)
    return max(0, wanted - obs.live - obs.starting)
