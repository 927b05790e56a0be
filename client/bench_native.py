"""Iterations per second of the SHA-512 chain: `python -m client.bench_native [--quick]`.

One run measures the Python hashlib loop, every backend this CPU has on one chain and on batches
of 8/16/32/64 chains (one `chain_many` call on one thread), and one thread per core, each running
`chain_many` over its share of 64 jobs (the worker's shape). Every figure comes with its ratio to the
hashlib loop, which is measured at the start and at the end of the run (the ratio uses their
mean) so a noisy shared machine shows up instead of skewing one side.

Single-thread rates are per CPU second of the measuring thread (`time.thread_time`), so time
lost to other processes on a shared machine does not count; the threaded row gives both the
wall-clock rate and the rate per CPU second (per core).
"""

from __future__ import annotations

import argparse
import functools
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import native
from native.reference import chain as hashlib_chain

BODY = bytes(range(64))


def hashlib_loop(iterations: int) -> bytes:
    """The chain of BODY in plain Python (native.reference, hashlib): the baseline of every ratio."""
    return hashlib_chain(BODY, iterations)


def rate(fn: Callable[[], object], iterations: int) -> float:
    """Iterations per CPU second of fn() on this thread, best of 3."""
    best = float("inf")
    for _ in range(3):
        start = time.thread_time()
        fn()
        best = min(best, time.thread_time() - start)
    return iterations / best


def threaded_rate(jobs: list[tuple[bytes, int]], threads: int) -> tuple[float, float]:
    """(iterations per wall second, iterations per CPU second) of `threads` chain_many calls."""
    parts = [jobs[i::threads] for i in range(threads)]
    workers = [threading.Thread(target=native.chain_many, args=(part,)) for part in parts]
    wall, cpu = time.perf_counter(), time.process_time()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    total = sum(n for _, n in jobs)
    return total / wall, total / cpu


def measure(quick: bool = False) -> dict[str, Any]:
    """Every figure of the run: the hashlib loop at the start and the end, and each row's it/s."""
    scale = 10 if quick else 1
    one_chain = 1_000_000 // scale
    batch_total = 4_000_000 // scale
    worker_iterations = 1_000_000 // scale
    threads = len(os.sched_getaffinity(0))

    rows: dict[str, float] = {}
    start_hashlib = rate(lambda: hashlib_loop(one_chain), one_chain)
    check = hashlib_loop(1000)
    original = native.backend()
    available = native.available_backends()
    try:
        for name in available:
            native.use_backend(name)
            assert native.chain_many([(BODY, 1000)]) == [check], name
            if name == "scalar":
                rows["scalar chain()"] = rate(lambda: native.chain(BODY, one_chain), one_chain)
            rows[f"{name} chain_many x1"] = rate(lambda: native.chain_many([(BODY, one_chain)]), one_chain)
            for size in (8, 16, 32, 64):
                per = batch_total // size
                jobs = [(bytes([i]) + BODY, per) for i in range(size)]
                batch = functools.partial(native.chain_many, jobs)
                rows[f"{name} chain_many x{size}"] = rate(batch, per * size)
        native.use_backend(original)
        jobs = [(bytes([i]) + BODY, worker_iterations) for i in range(64)]
        wall, per_cpu = threaded_rate(jobs, threads)
        label = f"{original} {threads} threads x chain_many, 64 jobs x {worker_iterations:,}"
        rows[f"{label}, wall"] = wall
        rows[f"{label}, per core"] = per_cpu
    finally:
        native.use_backend(original)
    end_hashlib = rate(lambda: hashlib_loop(one_chain), one_chain)
    return {
        "backends": available,
        "default": original,
        "lanes": native.lanes(),
        "hashlib_start_it_per_s": start_hashlib,
        "hashlib_end_it_per_s": end_hashlib,
        "hashlib_it_per_s": (start_hashlib + end_hashlib) / 2,
        "rows": rows,
    }


def format_lines(measured: dict[str, Any]) -> list[str]:
    """The printed table: every row in M it/s with its ratio to the mean hashlib rate."""
    base = measured["hashlib_it_per_s"]
    lines = [
        f"backends: {', '.join(measured['backends'])} (default {measured['default']}, {measured['lanes']} lanes)",
        f"{'hashlib loop (start)':<68} {measured['hashlib_start_it_per_s'] / 1e6:8.2f} M it/s",
        f"{'hashlib loop (end)':<68} {measured['hashlib_end_it_per_s'] / 1e6:8.2f} M it/s",
    ]
    for label, value in measured["rows"].items():
        lines.append(f"{label:<68} {value / 1e6:8.2f} M it/s {value / base:7.2f}x hashlib")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m client.bench_native", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the work (a smoke test, noisier)")
    args = parser.parse_args(argv)
    print("\n".join(format_lines(measure(args.quick))))


if __name__ == "__main__":
    main()
