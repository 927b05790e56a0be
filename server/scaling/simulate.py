"""A fast simulation of autoscaling: fake clock, simulated cloud, bursty traces.

The cloud boots a launched worker after a random boot delay; each worker has its own speed;
a worker takes the oldest queued job whenever it is free and exits after idle_exit_s without
work. Billing is per second from launch to exit with EC2's 60-second minimum. The scaling rule
runs every tick_s on the observation the real autoscaler would make (measured median worker
rate, measured boot time) and its launches pass through the real LaunchGuard.

    python -m server.scaling.simulate                 # the burst and bursty traces, all rules
    python -m server.scaling.simulate --trace bursty --seed 7

Rules compared:
- policy: server.policy (projected need from measured rate and boot time);
- fixed: "oldest job > 15 s, add one worker", checked every tick, as the rule is stated;
- fixed-cooldown: the same rule, but no new launch while one is still booting.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import random
import statistics
from collections.abc import Callable, Iterable

from common.stats import percentile, smoothed
from server.scaling import policy
from server.scaling.guard import LaunchGuard


@dataclasses.dataclass(frozen=True)
class CloudParams:
    boot_s: float = 40.0  # mean launch -> first job
    boot_jitter_s: float = 10.0  # boot is uniform in boot_s +- this
    worker_rate: float = 5e6  # mean cost units per second of one worker
    rate_spread: float = 0.3  # each worker's speed is uniform in rate * (1 +- spread)
    idle_exit_s: float = 60.0
    max_workers: int = 10
    min_billed_s: float = 60.0
    tick_s: float = 1.0
    max_launches_per_minute: int = 20


@dataclasses.dataclass(frozen=True)
class Job:
    arrival: float
    cost: int


@dataclasses.dataclass
class SimWorker:
    launched_at: float
    ready_at: float
    rate: float
    free_at: float  # when its current job ends (ready_at before the first)
    exited_at: float | None = None
    reported: bool = False  # its boot time has been measured

    @property
    def billed_s(self) -> float:
        assert self.exited_at is not None, "billed once it has exited"
        return self.exited_at - self.launched_at


@dataclasses.dataclass(frozen=True)
class Report:
    rule: str
    jobs: int
    worker_seconds: float
    launches: int
    p50_s: float
    p95_s: float
    max_s: float
    most_workers: int

    def line(self) -> str:
        return (
            f"{self.rule:15s} jobs {self.jobs:5d}  billed {self.worker_seconds:8.0f} worker-s  "
            f"launches {self.launches:3d}  peak {self.most_workers:3d}  latency p50 {self.p50_s:6.1f}s  "
            f"p95 {self.p95_s:6.1f}s  max {self.max_s:6.1f}s"
        )


# -- rules: observation -> launches wanted now -----------------------------------------------
Rule = Callable[[policy.Observation], int]


def policy_rule(params: policy.PolicyParams | None = None) -> Rule:
    params = params or policy.PolicyParams()
    return lambda obs: policy.to_launch(obs, params)


def fixed_rule(wait_s: float = 15.0, *, cooldown: bool = False) -> Rule:
    def rule(obs: policy.Observation) -> int:
        if cooldown and obs.starting:
            return 0
        have = obs.live + obs.starting
        return 1 if obs.oldest_wait_s > wait_s and have < obs.allowed else 0

    return rule


# -- traces ------------------------------------------------------------------------------------
def burst(jobs: int = 200, at: float = 0.0, over_s: float = 10.0, job_s: float = 1.0, rate: float = 5e6) -> list[Job]:
    """`jobs` jobs of job_s seconds of work each, arriving evenly over over_s from `at`."""
    cost = int(job_s * rate)
    return [Job(at + over_s * i / jobs, cost) for i in range(jobs)]


def bursty(seed: int = 1, duration_s: float = 1800.0, rate: float = 5e6) -> list[Job]:
    """A trickle of short jobs with bursts of varied size and job length at random times."""
    rng = random.Random(seed)
    jobs = []
    t = 0.0
    while t < duration_s:  # trickle: a 0.2-2 s job every ~20 s
        t += rng.expovariate(1 / 20)
        jobs.append(Job(t, int(rng.uniform(0.2, 2.0) * rate)))
    t = 0.0
    while True:
        t += rng.uniform(120, 400)
        if t >= duration_s:
            break
        n = rng.choice([20, 50, 150, 400])
        job_s = rng.choice([0.2, 1.0, 3.0])
        jobs += burst(n, t, rng.uniform(2, 30), job_s, rate)
    return sorted(jobs, key=lambda j: j.arrival)


TRACES: dict[str, Callable[[int], list[Job]]] = {"burst": lambda seed: burst(), "bursty": bursty}


# -- the simulation -----------------------------------------------------------------------------
def simulate(  # noqa: PLR0912, PLR0915 - the simulation's one event loop reads best whole
    trace: Iterable[Job],
    rule: Rule,
    *,
    name: str = "rule",
    cloud: CloudParams | None = None,
    seed: int = 0,
    default_rate: float | None = None,
    initial_boot_s: float = 0.0,
) -> Report:
    cloud = cloud or CloudParams()
    rng = random.Random(seed)
    pending = sorted(trace, key=lambda j: j.arrival)
    guard = LaunchGuard(max_per_minute=cloud.max_launches_per_minute, clock=lambda: 0.0, rng=rng.random)
    default_rate = cloud.worker_rate if default_rate is None else default_rate
    queue: list[tuple[float, int, Job]] = []  # (arrival, index, job): FIFO
    backlog_cost = 0
    workers: list[SimWorker] = []
    latencies: list[float] = []
    boot_estimate: float | None = None
    arrived = 0
    now = 0.0
    most = 0
    end_at = (pending[-1].arrival if pending else 0.0) + 24 * 3600.0

    def active() -> list[SimWorker]:
        return [w for w in workers if w.exited_at is None]

    while now < end_at:
        # arrivals up to now
        while arrived < len(pending) and pending[arrived].arrival <= now:
            job = pending[arrived]
            heapq.heappush(queue, (job.arrival, arrived, job))
            backlog_cost += job.cost
            arrived += 1
        # free workers take the oldest job, the earliest free first, up to now
        ready = [(w.free_at, i, w) for i, w in enumerate(workers) if w.exited_at is None and w.ready_at <= now]
        heapq.heapify(ready)
        while ready and queue:
            free_at, i, w = ready[0]
            start = max(free_at, queue[0][0])
            if start > now:
                break
            arrival, _, job = heapq.heappop(queue)
            backlog_cost -= job.cost
            w.free_at = start + job.cost / w.rate
            latencies.append(w.free_at - arrival)
            heapq.heapreplace(ready, (w.free_at, i, w))
        for w in active():
            if w.ready_at <= now and not queue and now - w.free_at >= cloud.idle_exit_s:
                w.exited_at = max(w.free_at + cloud.idle_exit_s, w.launched_at + cloud.min_billed_s)
        # measurements the server would have
        live = [w for w in active() if w.ready_at <= now]
        starting = [w for w in active() if w.ready_at > now]
        for w in workers:  # boot time is measured at the first report
            if w.ready_at <= now and not w.reported:
                w.reported = True
                took = w.ready_at - w.launched_at
                boot_estimate = smoothed(boot_estimate, took, policy.BOOT_SMOOTHING)
        measured = [w.rate for w in workers if w.ready_at <= now]
        obs = policy.Observation(
            queued=len(queue),
            backlog_cost=backlog_cost,
            oldest_wait_s=(now - queue[0][0]) if queue else 0.0,
            live=len(live),
            starting=len(starting),
            allowed=cloud.max_workers,
            min_workers=0,
            worker_rate=statistics.median(measured) if measured else default_rate,
            boot_s=boot_estimate if boot_estimate is not None else initial_boot_s,
        )
        count = guard.allowed(min(rule(obs), cloud.max_workers - len(live) - len(starting)), now)
        if count > 0:
            guard.launched(count, now)
            for _ in range(count):
                boot = max(1.0, rng.uniform(cloud.boot_s - cloud.boot_jitter_s, cloud.boot_s + cloud.boot_jitter_s))
                rate = cloud.worker_rate * rng.uniform(1 - cloud.rate_spread, 1 + cloud.rate_spread)
                workers.append(SimWorker(now, now + boot, rate, now + boot))
        most = max(most, len(active()))
        if arrived == len(pending) and not queue and not active():
            break
        now += cloud.tick_s
    for w in workers:
        if w.exited_at is None:  # the simulation ran out of time: bill it to the end
            w.exited_at = max(now, w.launched_at + cloud.min_billed_s)
    latencies.sort()
    return Report(
        rule=name,
        jobs=len(latencies),
        worker_seconds=sum(w.billed_s for w in workers),
        launches=len(workers),
        p50_s=percentile(latencies, 50) if latencies else 0.0,
        p95_s=percentile(latencies, 95) if latencies else 0.0,
        max_s=latencies[-1] if latencies else 0.0,
        most_workers=most,
    )


RULES: dict[str, Callable[[], Rule]] = {
    "policy": policy_rule,
    "fixed": fixed_rule,
    "fixed-cooldown": lambda: fixed_rule(cooldown=True),
}


def compare(trace: list[Job], *, cloud: CloudParams | None = None, seed: int = 0) -> dict[str, Report]:
    return {name: simulate(trace, make(), name=name, cloud=cloud, seed=seed) for name, make in RULES.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.scaling.simulate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", choices=sorted(TRACES), action="append", help="trace(s) to run (default: all)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--boot-s", type=float, default=CloudParams.boot_s)
    parser.add_argument("--idle-exit-s", type=float, default=CloudParams.idle_exit_s)
    parser.add_argument("--max-workers", type=int, default=CloudParams.max_workers)
    args = parser.parse_args(argv)
    cloud = CloudParams(boot_s=args.boot_s, idle_exit_s=args.idle_exit_s, max_workers=args.max_workers)
    for trace_name in args.trace or sorted(TRACES):
        trace = TRACES[trace_name](args.seed)
        print(
            f"trace {trace_name}: {len(trace)} jobs, "
            f"{sum(j.cost for j in trace) / cloud.worker_rate:.0f} worker-s of work; "
            f"boot {cloud.boot_s:g}s, idle exit {cloud.idle_exit_s:g}s, max {cloud.max_workers} workers"
        )
        for report in compare(trace, cloud=cloud, seed=args.seed).values():
            print("  " + report.line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
