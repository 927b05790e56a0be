"""The `metrics` row: what Prometheus metrics cost on the hot path. Two dynwork clusters, one
with metrics and one started with --no-metrics, driven in turn (ABBA rounds) with the small-job
load of the `small` row; the ratio is jobs/s with metrics over jobs/s without (1.0: free)."""

from __future__ import annotations

from typing import Any

from client.bench import drive
from client.bench.cluster import Headline, Options, RowResult, dynwork_cluster, ratio, server_pids
from client.bench.rows import SMALL, _combine, _drive, _median_ratio, _roles, _side


def row_metrics(opts: Options) -> RowResult:
    row = RowResult("metrics", f"metrics on against off: 64-byte bodies, 1 iteration ({opts.small_jobs} jobs)")
    rounds = max(1, opts.rounds)
    bodies = drive.Bodies(max(1, opts.small_jobs // rounds), SMALL, seed=opts.seed)
    on_runs: list[dict[str, Any]] = []
    off_runs: list[dict[str, Any]] = []
    with (
        dynwork_cluster(opts, warm_workers=True, launcher="none") as on,
        dynwork_cluster(opts, warm_workers=True, launcher="none", metrics=False) as off,
    ):
        sides = {
            "on": (on, _roles(list(server_pids(on).values()), [w.proc.pid for w in on.workers]), on_runs),
            "off": (off, _roles(list(server_pids(off).values()), [w.proc.pid for w in off.workers]), off_runs),
        }
        for i in range(rounds):
            for side in ("on", "off") if i % 2 == 0 else ("off", "on"):
                cluster, roles, runs = sides[side]
                runs.append(_drive(opts, cluster.urls, bodies, roles))
    with_metrics, without = _combine(on_runs, bodies.total_bytes), _combine(off_runs, bodies.total_bytes)
    cost, each = _median_ratio(on_runs, off_runs, "end_to_end_jobs_per_s")
    row.figures.update(metrics_on=with_metrics, metrics_off=without, on_over_off=cost, on_over_off_rounds=each)
    # The servers' CPU per job hardly depends on what else runs: the steadier figure of the two.
    cpu_on, cpu_off = with_metrics["cpu_ms_per_job"]["servers"], without["cpu_ms_per_job"]["servers"]
    cpu = ratio(cpu_off, cpu_on)
    row.figures["server_cpu_off_over_on"] = cpu
    row.ok = bool(with_metrics["ok"] and without["ok"])
    row.lines += [
        _side("dynwork, metrics on", with_metrics),
        _side("dynwork, --no-metrics", without),
        f"  {'ratio on / off':<30} end to end {cost}x (rounds {each})",
        f"  {'servers CPU ms per job':<30} on {cpu_on:.3f}, off {cpu_off:.3f}: off / on {cpu}x",
    ]
    row.headlines["on_over_off"] = Headline(cost, "x", "(1.0: metrics cost nothing)")
    row.headlines["server_cpu"] = Headline(cpu, "x", "(servers' CPU per job without metrics / with)")
    return row
