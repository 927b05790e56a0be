"""The scaling decision as a pure function, so it can be tested and simulated with a fake clock.

Work is measured in cost units: a job costs its iterations plus one per 128-byte block of its
body plus a fixed per-job overhead, so a backlog of many tiny jobs is not mistaken for no work.
Workers report their speed in the same units.

Projected need. The backlog is `work` worker-seconds at the measured worker rate. A worker
launched now helps only after `boot_s` (measured from launch to first report); until then the
live workers keep draining, and workers already starting arrive on average half a boot later.
What is left when a new worker would arrive is

    left = work - live * boot_s - starting * boot_s / 2

If nothing is left, launching only adds boot and idle time to the bill: the fleet on its way
clears the backlog first. Otherwise the fleet wanted is the one that clears `left` within
target_drain_s of its arrival: ceil(left / target_drain_s) workers, at least one more than
those there when the oldest job has waited scale_up_wait_s and nobody is on the way, never more
workers than queued jobs, and never below min_workers. `allowed` (max_workers and loans) caps
what is launched; the uncapped wish sizes the loans asked of the peer.
"""

from __future__ import annotations

import dataclasses
import math

#: weight of the newest boot time in the running estimate (autoscaler and simulation alike)
BOOT_SMOOTHING = 0.3


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


def left_when_booted(obs: Observation) -> float:
    """Worker-seconds of the backlog still queued when a worker launched now could start."""
    work_s = obs.backlog_cost / max(obs.worker_rate, 1.0)
    return work_s - obs.live * obs.boot_s - obs.starting * obs.boot_s / 2


def workers_wanted(obs: Observation, params: PolicyParams) -> int:
    """The fleet size this server wants now, before the `allowed` cap (so loans can be sized)."""
    have = obs.live + obs.starting
    if obs.queued == 0:
        return max(obs.min_workers, 0)
    wanted = 0
    left_s = left_when_booted(obs)
    if left_s > 0:
        wanted = math.ceil(left_s / max(params.target_drain_s, 1e-3))
        # Latency: the oldest job has waited too long and nobody is on the way.
        if obs.oldest_wait_s >= params.scale_up_wait_s and obs.starting == 0:
            wanted = max(wanted, have + 1)
    if have == 0:
        wanted = max(wanted, 1)  # queued work and no worker at all: someone must come
    # The fleet on its way stays (workers leave on their own when idle); never more new
    # workers than there are queued jobs for them.
    wanted = min(max(wanted, have), have + obs.queued)
    return max(wanted, obs.min_workers)


def to_launch(obs: Observation, params: PolicyParams) -> int:
    """How many workers to launch now, within the allowed total."""
    wanted = min(workers_wanted(obs, params), obs.allowed)
    return max(0, wanted - obs.live - obs.starting)
