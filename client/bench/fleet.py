"""Local fleet hashing against the kernel, and the native kernels against the hashlib loop.

The fleet row starts two servers as `make up` runs them (launcher local, max_workers 5, the other
settings at their defaults: autoscaled `python -m worker` processes, one hashing thread per core
each), enqueues `fleet_jobs` jobs of `fleet_iterations` iterations with random bodies, and pulls
their results. Its rate is jobs x iterations over the time from the first worker process's start
(its start time in /proc/PID/stat, as found by a /proc sampler polling every 0.25 s) to the last
result pulled. The kernel's rate is measured just before on an idle machine: one thread per core,
each calling `native.chain_many` on batches shaped as a worker's are for long jobs (one job per
lane, bodies of the same size), for `kernel_s` seconds: its wall-clock rate, and its rate per CPU
second times the cores (the kernel on a machine of its own). The row also sums the CPU time of
the workers (from /proc) to tell how much of the machine they got from the first worker's start
to the last result, and how fast they hashed per CPU second against the kernel.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any

import native
from client import bench_native
from client.bench import drive, probes
from client.bench.cluster import Headline, Options, RowResult, dynwork_cluster, ratio

CALL_S = 0.5  # the length of one kernel call when measuring the kernel


def _call_s(batch: list[tuple[bytes, int]]) -> float:
    started = time.perf_counter()
    native.chain_many(batch)
    return time.perf_counter() - started


def kernel_rate(body_bytes: int, seconds: float, tail: int = 0) -> dict[str, Any]:
    """Iterations per wall second of one `chain_many` thread per core, batches of one job per lane;
    with `tail`, also how long a batch of that many jobs takes against a full one (a backlog's
    last round: the kernel finishes a few last chains on narrower lanes)."""
    threads, lanes = probes.cores(), native.lanes()
    bodies = [bytes([i]) * body_bytes for i in range(lanes)]
    probe_iterations = 20_000
    one_thread = lanes * probe_iterations / _call_s([(b, probe_iterations) for b in bodies])
    per_job = max(1000, int(one_thread * CALL_S / lanes))
    batch = [(b, per_job) for b in bodies]
    tail_cost = _call_s(batch[:tail]) / _call_s(batch) if 0 < tail < lanes else 1.0
    done = [0] * threads
    begin = threading.Barrier(threads + 1)

    def hash_for(slot: int, deadline_s: float) -> None:
        begin.wait()
        end = time.perf_counter() + deadline_s
        while time.perf_counter() < end:
            native.chain_many(batch)
            done[slot] += per_job * lanes

    workers = [threading.Thread(target=hash_for, args=(i, seconds)) for i in range(threads)]
    for w in workers:
        w.start()
    begin.wait()
    wall, cpu = time.perf_counter(), time.process_time()
    for w in workers:
        w.join()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "it_per_s": round(sum(done) / wall),
        "it_per_cpu_s": round(sum(done) / cpu),
        "ideal_it_per_s": round(sum(done) / cpu * threads),
        "threads": threads,
        "lanes": lanes,
        "backend": native.backend(),
        "iterations_per_job_per_call": per_job,
        "seconds": round(wall, 2),
        "tail_jobs": tail,
        "tail_cost": round(tail_cost, 3),
    }


def row_fleet(opts: Options) -> RowResult:
    jobs, iterations = opts.fleet_jobs, opts.fleet_iterations
    row = RowResult(
        "fleet",
        f"local fleet hashing: {jobs} jobs x {iterations:,} iterations, {opts.fleet_body_bytes // 1024} KB bodies, "
        "launcher local as `make up` (max_workers 5 per server)",
    )
    cores = probes.cores()
    slots = cores * native.lanes()
    kernel = kernel_rate(opts.fleet_body_bytes, opts.kernel_s, tail=math.ceil(jobs % slots / cores))
    bodies = drive.Bodies(jobs, opts.fleet_body_bytes, seed=opts.seed)
    timeout_s = max(600.0, jobs * iterations / 2e6)
    with (
        dynwork_cluster(opts, warm_workers=False, launcher="local", max_workers=5) as cluster,
        probes.FleetSampler(str(cluster.base)) as sampler,
    ):
        load = drive.run_load(
            cluster.urls, bodies, iterations=iterations, concurrency=min(opts.concurrency, 16), timeout_s=timeout_s
        )
        report, start = asyncio.run(load)
    peaks = sampler.peaks
    total = jobs * iterations
    last_result = start + report.elapsed_s
    first_worker = probes.boot_to_perf(peaks.first_start_boot_s) if peaks.first_start_boot_s is not None else None
    fleet_s = last_result - first_worker if first_worker is not None and report.ok else None
    fleet_rate = round(total / fleet_s) if fleet_s else None
    of_kernel = ratio(fleet_rate, kernel["it_per_s"])
    of_ideal = ratio(fleet_rate, kernel["ideal_it_per_s"])
    cpu_share = ratio(peaks.cpu_s, cores * fleet_s) if fleet_s else None
    # Equal long jobs run one a lane: the last round is part-empty, whatever the scheduling; it
    # takes tail_cost of a full round (less than one where the kernel moves it to narrower lanes).
    rounds = jobs // slots + (kernel["tail_cost"] if jobs % slots else 0)
    ceiling = ratio(jobs / slots, rounds)
    per_cpu = ratio(total / peaks.cpu_s if peaks.cpu_s else None, kernel["it_per_cpu_s"])
    row.ok = report.ok and fleet_rate is not None
    row.figures.update(
        kernel=kernel,
        fleet_it_per_s=fleet_rate,
        fleet_to_kernel_ratio=of_kernel,
        fleet_to_kernel_ideal_ratio=of_ideal,
        worker_cpu_s=round(peaks.cpu_s, 1),
        worker_cpu_share=cpu_share,
        fleet_per_cpu_s_to_kernel_ratio=per_cpu,
        lane_rounds=round(rounds, 3),
        lane_ceiling=ceiling,
        seconds_first_worker_to_last_result=round(fleet_s, 3) if fleet_s else None,
        seconds_first_enqueue_to_first_worker=round(first_worker - start, 3) if first_worker else None,
        seconds_first_enqueue_to_last_result=round(report.elapsed_s, 3),
        it_per_s_from_first_enqueue=round(total / report.elapsed_s) if report.elapsed_s and report.ok else None,
        max_worker_processes=peaks.processes,
        max_hashing_threads_configured=peaks.configured_threads,
        max_threads_at_work=peaks.running_threads,
        worker_processes_seen=len(peaks.pids),
        cores=cores,
        ok=report.ok,
        error=report.error,
    )
    row.lines += [
        f"  kernel: {kernel['threads']} threads x chain_many ({kernel['backend']}, {kernel['lanes']} jobs a call):"
        f" {kernel['it_per_s'] / 1e6:8.2f} M it/s wall; {kernel['it_per_cpu_s'] / 1e6:.2f} M it/s per CPU second,"
        f" x {cores} cores = {kernel['ideal_it_per_s'] / 1e6:.2f} M it/s (the kernel on an idle machine)",
        "  fleet, first worker start -> last result: "
        + (
            f"{fleet_rate / 1e6:8.2f} M it/s in {fleet_s:.1f} s = {of_kernel}x the kernel (goal >= 0.9)"
            if fleet_rate and fleet_s
            else f"NOT OK: {report.error}"
        ),
        f"  = {of_ideal}x the idle-machine kernel; the workers used {peaks.cpu_s:.1f} CPU s"
        f" = {cpu_share}x of {cores} cores over that time, hashing at {per_cpu}x the kernel's rate per CPU second",
        f"  lane ceiling: {jobs} equal jobs on {kernel['threads']} x {kernel['lanes']} lanes take {rounds:.2f} rounds"
        f" (the last, {kernel['tail_jobs']} a thread, {kernel['tail_cost']} of a full one)"
        f" where the kernel's steady rate needs {jobs / slots:.2f}: at most {ceiling}x the kernel for this backlog",
        f"  (first enqueue -> first worker start {row.figures['seconds_first_enqueue_to_first_worker']} s;"
        f" first enqueue -> last result {report.elapsed_s:.1f} s)",
        f"  most at once across both servers: {peaks.processes} worker processes,"
        f" {peaks.configured_threads} hashing threads (their --threads; cores {cores}),"
        f" {peaks.running_threads} worker threads at work (>= 5% of a core in a 0.25 s sample);"
        f" {len(peaks.pids)} worker processes in all",
    ]
    row.headlines["of_kernel"] = Headline(of_kernel, "x", ">= 0.9")
    row.headlines["of_kernel_idle_machine"] = Headline(of_ideal, "x", ">= 0.9")
    row.headlines["lane_ceiling"] = Headline(ceiling, "x")
    row.headlines["worker_cpu_share"] = Headline(cpu_share, "x")
    row.headlines["max_hashing_threads"] = Headline(peaks.configured_threads, "threads", f"<= {cores}")
    row.headlines["max_worker_processes"] = Headline(peaks.processes, "procs")
    return row


def row_native(opts: Options) -> RowResult:
    row = RowResult("native", "native kernels against the hashlib loop (python -m client.bench_native)")
    measured = bench_native.measure(quick=opts.quick)
    row.lines += ["  " + line for line in bench_native.format_lines(measured)]
    row.figures.update(measured)
    best = max((v for k, v in measured["rows"].items() if k.endswith(", wall")), default=None)
    row.headlines["threads_wall_of_hashlib"] = Headline(ratio(best, measured["hashlib_it_per_s"]), "x")
    return row
