"""The rows that compare dynwork with the bare baseline, and the bounded-memory row.

Each comparison row drives one workload with the same client (client.bench.drive) and the same
bodies against two bare aiohttp baseline processes (client.bench.baseline) and against two fresh
dynwork servers with one warm worker each (launcher none, so nothing scales mid-measurement), in
alternating rounds; its ratios are dynwork over baseline, the median of the rounds' ratios. The
stored row's servers first run jobs until they keep spare segments, as servers that have run a
while do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from client import loadgen
from client.bench import drive, probes
from client.bench.baseline import BaselinePair
from client.bench.cluster import KIB, Headline, Options, RowResult, dynwork_cluster, maybe_profile, ratio, server_pids
from client.localcluster import LocalCluster

BIG = 256 * KIB
MIXED = (16 * KIB, 256 * KIB)
SMALL = 64
LATENCY_WARMUP = 20


def _rss_mb(pids: dict[str, int]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, pid in pids.items():
        mem = probes.memory_kib(pid)
        out[f"{name}_rss_mb"] = round(mem["VmRSS"] / 1024, 1) if "VmRSS" in mem else None
        out[f"{name}_peak_rss_mb"] = round(mem["VmHWM"] / 1024, 1) if "VmHWM" in mem else None
    return out


def _drive(
    opts: Options, servers: tuple[str, ...], bodies: drive.Bodies, roles: dict[str, list[int]], **kw: Any
) -> dict[str, Any]:
    """One driven run; its summary has the CPU seconds each role's processes used during it."""
    timeout_s = max(600.0, len(bodies) * 0.05)
    before = probes.cpu_by_role(roles)
    report, _ = asyncio.run(drive.run_load(servers, bodies, concurrency=opts.concurrency, timeout_s=timeout_s, **kw))
    after = probes.cpu_by_role(roles)
    figures: dict[str, Any] = dict(drive.summary(report, bodies.total_bytes))
    figures["cpu_s"] = {role: round(after[role] - before[role], 2) for role in roles}
    return figures


def keep_logs_of_failure(row: RowResult, run: dict[str, Any], cluster: LocalCluster) -> None:
    """After the first failed run of a row, the tails of its servers' and workers' logs (WARNING
    and up by default), printed and in the JSON: they go with the cluster's temporary directory."""
    if run["ok"] or "logs_at_failure" in row.figures:
        return
    logs = cluster.logs()
    row.figures["logs_at_failure"] = logs
    row.lines.append("  logs at the failure:\n" + textwrap.indent(logs, "    "))


def _roles(servers: list[int], workers: list[int] | None = None) -> dict[str, list[int]]:
    return {"servers": servers, "workers": workers or [], "client": [os.getpid()]}


def _cpu_per_job(runs: list[dict[str, Any]]) -> dict[str, float]:
    jobs = sum(r["jobs"] for r in runs) or 1
    return {role: round(sum(r["cpu_s"][role] for r in runs) / jobs * 1000, 3) for role in runs[0]["cpu_s"]}


def _side(label: str, f: dict[str, Any]) -> str:
    trouble = "" if f["ok"] else f"  NOT OK: {f['completed']}/{f['jobs']} {f['error'] or ''}"
    return (
        f"  {label:<30} enqueue {f['enqueue_jobs_per_s']:9,.0f} jobs/s {f['enqueue_mb_per_s']:8,.1f} MB/s"
        f"   end to end {f['end_to_end_jobs_per_s']:9,.0f} jobs/s {f['end_to_end_mb_per_s']:8,.1f} MB/s"
        f"   ack->pulled p50 {f['ack_to_pulled_ms_p50']} ms{trouble}"
    )


def _combine(rounds: list[dict[str, Any]], round_bytes: int) -> dict[str, Any]:
    """One side's figures over its rounds: rates from the summed jobs, bytes and times."""
    jobs = sum(r["jobs"] for r in rounds)
    enqueue_s = sum(r["enqueue_s"] for r in rounds)
    elapsed_s = sum(r["elapsed_s"] for r in rounds)
    total = round_bytes * len(rounds)
    p50s = [r["ack_to_pulled_ms_p50"] for r in rounds if r["ack_to_pulled_ms_p50"] is not None]
    return {
        "jobs": jobs,
        "completed": sum(r["completed"] for r in rounds),
        "ok": all(r["ok"] for r in rounds),
        "error": next((r["error"] for r in rounds if r["error"]), None),
        "enqueue_jobs_per_s": round(jobs / enqueue_s, 1) if enqueue_s else 0.0,
        "enqueue_mb_per_s": round(total / enqueue_s / 1e6, 1) if enqueue_s else 0.0,
        "end_to_end_jobs_per_s": round(jobs / elapsed_s, 1) if elapsed_s else 0.0,
        "end_to_end_mb_per_s": round(total / elapsed_s / 1e6, 1) if elapsed_s else 0.0,
        "ack_to_pulled_ms_p50": round(statistics.median(p50s), 2) if p50s else None,
        "cpu_ms_per_job": _cpu_per_job(rounds),
        "rounds": rounds,
    }


def _format_cpu(per_job: dict[str, float]) -> str:
    return ", ".join(f"{role} {ms:.3f}" for role, ms in per_job.items() if ms or role != "workers")


def _median_ratio(dyn: list[dict[str, Any]], base: list[dict[str, Any]], key: str) -> tuple[float | None, list[Any]]:
    each = [ratio(d[key], b[key]) for d, b in zip(dyn, base, strict=True)]
    known = [r for r in each if r is not None]
    return (round(statistics.median(known), 3) if known else None), each


def compare(
    opts: Options,
    row: RowResult,
    make: Callable[[int], drive.Bodies],
    jobs: int,
    goal: str,
    *,
    prepare: Callable[[LocalCluster, dict[str, list[int]]], str] | None = None,
    **settings: object,
) -> None:
    """The baseline and dynwork, both up at once, driven in turn for `opts.rounds` rounds of
    jobs/rounds jobs each (ABBA order, so drift in the machine's load hits both sides alike); the
    ratios are the medians of the rounds' ratios. Fills the row's figures, lines and headlines.
    `settings` go to both dynwork servers; `prepare` readies them first and says how."""
    rounds = max(1, opts.rounds)
    bodies = make(max(1, jobs // rounds))
    base_runs: list[dict[str, Any]] = []
    dyn_runs: list[dict[str, Any]] = []
    profiles: list[Path] = []
    settings.setdefault("launcher", "none")
    with BaselinePair() as pair, dynwork_cluster(opts, warm_workers=True, **settings) as cluster:
        base_roles = _roles(pair.pids)
        dyn_roles = _roles(list(server_pids(cluster).values()), [w.proc.pid for w in cluster.workers])
        if prepare is not None:
            row.lines.append(prepare(cluster, dyn_roles))
        for i in range(rounds):
            for side in ("base", "dyn") if i % 2 == 0 else ("dyn", "base"):
                if side == "base":
                    base_runs.append(_drive(opts, pair.urls, bodies, base_roles))
                    continue
                with maybe_profile(opts, cluster, row.name, enabled=i == 0) as files:
                    dyn_runs.append(_drive(opts, cluster.urls, bodies, dyn_roles))
                keep_logs_of_failure(row, dyn_runs[-1], cluster)
                profiles += files
        rss = _rss_mb(server_pids(cluster))
    base, dyn = _combine(base_runs, bodies.total_bytes), _combine(dyn_runs, bodies.total_bytes)
    dyn.update(rss)
    e2e, e2e_each = _median_ratio(dyn_runs, base_runs, "end_to_end_jobs_per_s")
    enq, enq_each = _median_ratio(dyn_runs, base_runs, "enqueue_jobs_per_s")
    row.figures.update(
        baseline=base,
        dynwork=dyn,
        end_to_end_ratio=e2e,
        enqueue_ratio=enq,
        end_to_end_ratio_rounds=e2e_each,
        enqueue_ratio_rounds=enq_each,
    )
    if profiles:
        row.figures["profiles"] = [str(p) for p in profiles]
    row.ok = bool(base["ok"] and dyn["ok"])
    row.lines += [
        _side("baseline (2 bare aiohttp procs)", base),
        _side("dynwork (2 servers, warm)", dyn),
        f"  {'ratio dynwork / baseline':<30} enqueue {enq}x (rounds {enq_each})"
        f"   end to end {e2e}x (rounds {e2e_each})" + (f"  (goal {goal})" if goal else ""),
        f"  {'CPU ms per job':<30} baseline {_format_cpu(base['cpu_ms_per_job'])};"
        f"  dynwork {_format_cpu(dyn['cpu_ms_per_job'])}",
    ]
    row.headlines["end_to_end"] = Headline(e2e, "x", goal)
    row.headlines["enqueue"] = Headline(enq, "x")
    # CPU per job hardly depends on what else the machine runs: the steadiest figure here.
    cpu = ratio(base["cpu_ms_per_job"]["servers"], dyn["cpu_ms_per_job"]["servers"])
    row.figures["server_cpu_baseline_over_dynwork"] = cpu
    row.headlines["server_cpu"] = Headline(cpu, "x", "(baseline servers' CPU per job / dynwork's)")


def row_big(opts: Options) -> RowResult:
    row = RowResult("big", f"256 KB bodies, 1 iteration ({opts.big_jobs} jobs, concurrency {opts.concurrency})")
    with _against_disk(opts, row, "bodies hashed on arrival, not written"):
        compare(opts, row, _big(opts), opts.big_jobs, ">= 0.5")
    return row


def row_stored(opts: Options) -> RowResult:
    """The big row's jobs with --hash-on-arrival 0: every body written to a segment file, read back
    and sent to a worker, which hashes it. The storage and fleet path, for jobs too dear to hash
    on arrival; the big row's own jobs are hashed by the servers that take them. Not with --quick,
    the servers first run jobs until they keep spare segments (_run_until_spare_segments)."""
    row = RowResult("stored", "the big row's jobs, every one stored and hashed by a worker (--hash-on-arrival 0)")
    prepare = None if opts.quick else _run_until_spare_segments(opts)
    with _against_disk(opts, row, "bodies written, fdatasynced"):
        compare(opts, row, _big(opts), opts.big_jobs, "", prepare=prepare, hash_on_arrival=0)
    return row


SPARES_WANTED = 2  # what a server that has run a while keeps to write over (server/bodies.py, SPARE_SEGMENTS)
SPARES_BATCH_JOBS = 1024
SPARES_MAX_BATCHES = 12


def _run_until_spare_segments(opts: Options) -> Callable[[LocalCluster, dict[str, list[int]]], str]:
    """Run the row's jobs through both servers until each keeps its spare segments, as a server
    that has run a while does: a fresh one appends its first segments to new files, which costs
    more (see server/bodies.py); that is the first half gigabyte of a server's life, not its usual
    state."""

    def prepare(cluster: LocalCluster, roles: dict[str, list[int]]) -> str:
        bodies = drive.Bodies(SPARES_BATCH_JOBS, BIG, seed=opts.seed)

        def spares() -> list[int]:
            return [len(list((s.state_dir / "bodies").glob("spare-*.dat"))) for s in cluster.servers]

        batches = 0
        while min(spares()) < SPARES_WANTED and batches < SPARES_MAX_BATCHES:
            if not _drive(opts, cluster.urls, bodies, roles)["ok"]:
                break
            batches += 1
        return (
            f"  dynwork servers first ran {batches * SPARES_BATCH_JOBS:,} of these jobs, until they kept spare"
            f" segments to write over, as a server that has run a while does: {spares()} (wanted {SPARES_WANTED} each)"
        )

    return prepare


def _big(opts: Options) -> Callable[[int], drive.Bodies]:
    return lambda n: drive.Bodies(n, BIG, seed=opts.seed)


@contextlib.contextmanager
def _against_disk(opts: Options, row: RowResult, what: str) -> Iterator[None]:
    """Measure the row in the block between fsynced sequential writes of the disk the state dirs
    are on (one before, two after), and print its enqueue MB/s against their median; `what` says
    whether the bodies were written."""
    disk = [probes.fsync_write_mb_s(opts.state_parent, opts.disk_mib << 20)]
    yield
    disk += [probes.fsync_write_mb_s(opts.state_parent, opts.disk_mib << 20) for _ in range(2)]
    disk_mb_s = round(statistics.median(disk), 1)
    enqueue_mb_s = row.figures["dynwork"]["enqueue_mb_per_s"]
    of_disk = ratio(enqueue_mb_s, disk_mb_s)
    row.figures.update(
        disk_fsync_write_mb_per_s=disk_mb_s,
        disk_samples_mb_per_s=[round(d, 1) for d in disk],
        enqueue_to_disk_ratio=of_disk,
    )
    row.lines.append(
        f"  disk: {opts.disk_mib} MiB sequential write + one fsync in {opts.state_parent}, before and twice after:"
        f" {', '.join(f'{d:,.0f}' for d in disk)} MB/s, median {disk_mb_s:,.1f};"
        f" dynwork enqueue ({what}) {enqueue_mb_s:,.1f} MB/s = {of_disk}x of it (goal >= 0.6)"
    )
    row.headlines["enqueue_of_disk"] = Headline(of_disk, "x", ">= 0.6")


def row_mixed(opts: Options) -> RowResult:
    low, high = MIXED
    title = (
        f"mixed {low // KIB}-{high // KIB} KB bodies (uniform, seed {opts.seed}), 1 iteration ({opts.mixed_jobs} jobs)"
    )
    row = RowResult("mixed", title)
    compare(opts, row, lambda n: drive.Bodies(n, low, high, seed=opts.seed), opts.mixed_jobs, ">= 0.5")
    return row


def row_small(opts: Options) -> RowResult:
    row = RowResult("small", f"64-byte bodies, 1 iteration ({opts.small_jobs} jobs, concurrency {opts.concurrency})")
    compare(opts, row, lambda n: drive.Bodies(n, SMALL, seed=opts.seed), opts.small_jobs, ">= 0.4")
    return row


def _latency(servers: tuple[str, ...], jobs: int, verify: bool) -> loadgen.BenchReport:
    cfg = loadgen.BenchConfig(servers, jobs=jobs, warmup=LATENCY_WARMUP, body_bytes=SMALL, verify=verify)
    return asyncio.run(loadgen.run(cfg, latency=True))


def _latency_figures(reports: list[loadgen.BenchReport]) -> dict[str, Any]:
    lat = loadgen.latency_summary([x for r in reports for x in r.latencies_s])
    enq = loadgen.latency_summary([x for r in reports for x in r.enqueue_latencies_s])
    answered = [x for r in reports for x in r.answered_latencies_s]
    one_trip = loadgen.latency_summary(answered)
    return {
        "jobs": sum(len(r.latencies_s) for r in reports),
        "ok": all(r.ok for r in reports),
        "error": next((r.error for r in reports if r.error), None),
        **{f"{k}_ms": round(v, 3) for k, v in lat.items() if k in ("p50", "p95", "p99", "max")},
        "enqueue_p50_ms": round(enq["p50"], 3),
        "answered_jobs": len(answered),  # of them, acks that carried the result (hashed on arrival)
        "answered_p50_ms": round(one_trip["p50"], 3) if answered else None,
        "answered_p99_ms": round(one_trip["p99"], 3) if answered else None,
        "p50_ms_rounds": [round(loadgen.latency_summary(r.latencies_s)["p50"], 3) for r in reports],
    }


def row_latency(opts: Options) -> RowResult:
    row = RowResult(
        "latency",
        f"warm 1-iteration latency, enqueue -> GET /work/{{id}}?wait=5, one at a time "
        f"({opts.latency_jobs} jobs in {opts.rounds} rounds, each after {LATENCY_WARMUP} warm-up; 64-byte bodies, "
        "alternating servers)",
    )
    per_round = max(1, opts.latency_jobs // max(1, opts.rounds))
    runs: dict[str, list[loadgen.BenchReport]] = {"base": [], "durable": [], "dyn": []}
    with (
        tempfile.TemporaryDirectory(prefix="dynwork-bench-", dir=opts.state_parent) as durable_dir,
        BaselinePair() as pair,
        BaselinePair(durable=Path(durable_dir)) as durable,
        dynwork_cluster(opts, warm_workers=True, launcher="none") as cluster,
    ):
        urls = {"base": pair.urls, "durable": durable.urls, "dyn": cluster.urls}
        for i in range(max(1, opts.rounds)):
            for side in ("base", "durable", "dyn") if i % 2 == 0 else ("dyn", "durable", "base"):
                runs[side].append(_latency(urls[side], per_round, verify=side == "dyn"))
    base, floor, dyn = (_latency_figures(runs[side]) for side in ("base", "durable", "dyn"))
    row.figures.update(baseline=base, durable_baseline=floor, dynwork=dyn)
    row.ok = bool(base["ok"] and floor["ok"] and dyn["ok"])
    for label, f in (
        ("baseline (PUT + GET, no work)", base),
        ("baseline + fsynced commit", floor),
        ("dynwork (warm worker)", dyn),
    ):
        row.lines.append(
            f"  {label:<30} p50 {f['p50_ms']:.2f} ms  p95 {f['p95_ms']:.2f} ms  p99 {f['p99_ms']:.2f} ms"
            f"  max {f['max_ms']:.2f} ms  (of which PUT p50 {f['enqueue_p50_ms']:.2f} ms)"
            + f" (p50 by round {f['p50_ms_rounds']})"
            + ("" if f["ok"] else f"  NOT OK: {f['error']}")
        )
    if dyn["answered_jobs"]:
        row.lines.append(
            f"  {'dynwork, result in the answer':<30} p50 {dyn['answered_p50_ms']:.2f} ms"
            f"  p99 {dyn['answered_p99_ms']:.2f} ms  ({dyn['answered_jobs']} of {dyn['jobs']} jobs hashed on arrival:"
            f" their PUT's answer has the result, no GET needed;"
            f" the floor's PUT alone: p50 {floor['enqueue_p50_ms']:.2f} ms)"
        )
        row.headlines["p50_result_in_answer_ms"] = Headline(dyn["answered_p50_ms"], "ms")
    row.lines.append(
        "  (baseline + fsynced commit: the bare server committing each enqueue to SQLite, WAL, synchronous=FULL,"
        " in a thread before answering: what one durable commit a job costs a server that does nothing else)"
    )
    row.headlines["p50_ms"] = Headline(dyn["p50_ms"], "ms", "<= 1")
    row.headlines["p99_ms"] = Headline(dyn["p99_ms"], "ms", "<= 3")
    row.headlines["p50_over_durable_floor_ms"] = Headline(round(dyn["p50_ms"] - floor["p50_ms"], 3), "ms")
    return row


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def row_memory(opts: Options) -> RowResult:
    jobs = opts.memory_jobs
    title = f"bounded memory: a backlog of {jobs:,} jobs of 256 KB, stored (--hash-on-arrival 0), no workers"
    row = RowResult("memory", title)
    need = jobs * BIG * 1.25 + (2 << 30)
    free = shutil.disk_usage(opts.state_parent).free
    if free < need:
        row.skipped = f"{opts.state_parent} has {free / 1e9:.1f} GB free, the row needs ~{need / 1e9:.1f} GB"
        row.lines.append(f"  skipped: {row.skipped} (--memory-jobs N for a smaller backlog)")
        return row
    bodies = drive.Bodies(jobs, BIG, seed=opts.seed)
    backlog = {"launcher": "none", "max_queued": max(100_000, jobs), "hash_on_arrival": 0}
    with dynwork_cluster(opts, warm_workers=False, **backlog) as cluster:
        pids = server_pids(cluster)
        before = _rss_mb(pids)
        with maybe_profile(opts, cluster, row.name):
            dyn = _drive(opts, cluster.urls, bodies, _roles(list(pids.values())), pull=False)
        keep_logs_of_failure(row, dyn, cluster)
        after = _rss_mb(pids)
        on_disk = _tree_bytes(cluster.base)
    row.ok = bool(dyn["ok"])
    row.figures.update(dynwork=dyn, rss_start=before, rss_end=after, state_bytes=on_disk)
    row.lines.append(
        f"  enqueued {dyn['completed']:,}/{jobs:,} in {dyn['enqueue_s']:.1f} s"
        f" ({dyn['enqueue_jobs_per_s']:,.0f} jobs/s, {dyn['enqueue_mb_per_s']:,.1f} MB/s);"
        f" state on disk {on_disk / 1e9:.2f} GB" + ("" if dyn["ok"] else f"  NOT OK: {dyn['error']}")
    )
    for name in pids:
        row.lines.append(
            f"  {name}: RSS {before[f'{name}_rss_mb']} MB at the start, {after[f'{name}_rss_mb']} MB at the end"
            f" (peak {after[f'{name}_peak_rss_mb']} MB)"
        )
    ends = [after[f"{n}_rss_mb"] or 0.0 for n in pids]
    row.headlines["end_rss_mb_max"] = Headline(max(ends, default=None), "MB", "flat")
    row.headlines["seconds"] = Headline(dyn["enqueue_s"], "s")
    return row
