"""`python -m client.benchmark` (`make bench`): dynwork against a bare baseline, in one run.

Rows (all by default; `--rows` picks some):

  big      256 KB bodies, 1 iteration: enqueue jobs/s and MB/s and end to end jobs/s, dynwork and
           the baseline, and the machine's fsync'd sequential write MB/s beside the enqueue MB/s
  stored   the big row's jobs with --hash-on-arrival 0: every body stored and hashed by a worker,
           on servers that first ran jobs until they kept spare segments to write over
  mixed    16-256 KB bodies (uniform, fixed seed), end to end
  small    64-byte bodies, end to end
  latency  warm 1-iteration latency, enqueue -> GET /work/{id}?wait=5 one job at a time, beside
           the baseline and the baseline committing each enqueue to SQLite with an fsync (the floor
           that a durable SQLite store sets on this machine); and the PUT alone, whose answer
           carries the result of a job hashed on arrival
  fleet    local fleet hashing (autoscaled workers as `make up` runs them) against the kernel
           on every core
  memory   both servers' RSS with a backlog of --memory-jobs 256 KB jobs and no workers
  metrics  jobs/s and server CPU with metrics on against --no-metrics
  native   the native kernels against the hashlib loop (python -m client.bench_native)

The baseline (client/bench/baseline.py) is two bare aiohttp processes, mirroring dynwork's two
servers: PUT /enqueue keeps the body in a dict, POST /pullCompleted pops up to top of them, no
disk, no workers. Each comparison row drives it and then two fresh dynwork servers (one warm
worker each) with the same client: the load generator's raw keep-alive HTTP/1.1 transport and
retry policy, the same concurrency and bodies, jobs alternating between the two servers. Every
ratio is therefore between figures taken in the same run, minutes apart, which is what survives a
shared, noisy machine. `--runs N` repeats everything and prints the median of each headline.
State goes to fresh temporary directories (--tmp-dir), removed with every process at the end.

On a shared machine: each row prints the load average and CPU pressure (PSI) when it ended;
comparison rows alternate baseline and dynwork in --rounds rounds (ABBA) and take the median of
the rounds' ratios; and they print the CPU milliseconds per job of each side's servers, workers
and client (from /proc), which hardly move with other tenants' load. The fleet row prints its
rate against the kernel measured two ways (see client/bench/fleet.py): wall clock in this process
(what the goal names; under contention the kernel's two threads get less of the machine than a
fleet of many processes, since the scheduler shares by session) and per CPU second x cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import signal
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import native
from client.bench import probes
from client.bench.cluster import Options, RowResult
from client.bench.fleet import row_fleet, row_native
from client.bench.metrics_cost import row_metrics
from client.bench.rows import row_big, row_latency, row_memory, row_mixed, row_small, row_stored
from client.localcluster import LocalClusterError
from common.cost import ON_LOOP_MAX_COMPRESSIONS

ROWS: dict[str, Callable[[Options], RowResult]] = {
    "big": row_big,
    "stored": row_stored,
    "mixed": row_mixed,
    "small": row_small,
    "latency": row_latency,
    "fleet": row_fleet,
    "memory": row_memory,
    "metrics": row_metrics,
    "native": row_native,
}
# flag: (default, --quick default)
SIZES: dict[str, tuple[float, float]] = {
    "big_jobs": (4500, 300),
    "mixed_jobs": (4500, 300),
    "small_jobs": (30_000, 2000),
    "rounds": (3, 1),
    "latency_jobs": (500, 100),
    "disk_mib": (1024, 64),
    "fleet_jobs": (200, 8),
    "fleet_iterations": (10_000_000, 200_000),
    "kernel_s": (4.0, 1.0),
    "memory_jobs": (100_000, 300),
}


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Options]:
    parser = argparse.ArgumentParser(
        prog="python -m client.benchmark",
        description=(__doc__ or "").splitlines()[0],
        epilog="Sizes default to a full run (~10 minutes on 2 cores, plus the memory row); --quick shrinks them.",
    )
    parser.add_argument("--quick", action="store_true", help="smoke-sized run (every size below shrinks)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows (default all: {','.join(ROWS)})")
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole run; prints each and the medians")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--concurrency", type=int, default=64, help="enqueue tasks in flight (default 64)")
    for name, (full, quick) in SIZES.items():
        kind = float if isinstance(full, float) else int
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"default {full:,} ({quick:,} with --quick)")
    parser.add_argument("--fleet-body-kb", type=int, default=64, help="body size of the fleet row's jobs (default 64)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the bodies and of the mixed sizes")
    parser.add_argument("--tmp-dir", type=Path, help="parent of the state dirs (default: the system temp dir)")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy the servers of each row into DIR")
    parser.add_argument("--log-level", default="WARNING", help="the servers' log level (default WARNING)")
    parser.add_argument(
        "--hash-on-arrival",
        type=int,
        help="the servers' --hash-on-arrival (default theirs); 0 sends every job through a worker",
    )
    args = parser.parse_args(argv)
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown or args.runs < 1:
        parser.error(f"unknown rows {unknown} (choose from {', '.join(ROWS)})" if unknown else "--runs must be >= 1")
    sizes = {}
    for name, (full, quick) in SIZES.items():
        given = getattr(args, name)
        sizes[name] = given if given is not None else type(full)(quick if args.quick else full)
    opts = Options(
        concurrency=args.concurrency,
        fleet_body_bytes=args.fleet_body_kb * 1024,
        seed=args.seed,
        quick=args.quick,
        tmp_dir=args.tmp_dir,
        profile_dir=args.profile,
        log_level=args.log_level,
        hash_on_arrival=args.hash_on_arrival,
        **sizes,  # type: ignore[arg-type]
    )
    return args, opts


def run_row(name: str, opts: Options) -> RowResult:
    print(f"\n[{name}] ...", flush=True)
    started = time.perf_counter()
    try:
        row = ROWS[name](opts)
    except (LocalClusterError, OSError, RuntimeError, ValueError) as exc:  # the other rows' figures still count
        traceback.print_exc()
        row = RowResult(name, name, ok=False, lines=[f"  FAILED: {type(exc).__name__}: {exc}"])
    row.figures["row_seconds"] = round(time.perf_counter() - started, 1)
    busy = row.figures["machine"] = probes.contention()
    print(
        f"[{name}] {row.title}  ({row.figures['row_seconds']:.0f} s; load {busy['loadavg_1m']}, "
        f"cpu pressure {busy['cpu_pressure_some_avg60']}%)" + ("" if row.ok else "  NOT OK")
    )
    print("\n".join(row.lines), flush=True)
    return row


def closing_table(runs: list[dict[str, RowResult]]) -> tuple[list[str], dict[str, float | None]]:
    """Each headline figure per run and its median; the lines and the medians by 'row.figure'."""
    keys = list(dict.fromkeys(f"{r}.{h}" for run in runs for r, row in run.items() for h in row.headlines))
    head = f"{'figure':<34}" + "".join(f"{f'run {i + 1}':>10}" for i in range(len(runs))) + f"{'median':>10}  goal"
    lines, medians = [head], {}
    for key in keys:
        name, figure = key.split(".", 1)
        found = [run[name].headlines.get(figure) if name in run else None for run in runs]
        values = [h.value for h in found if h is not None and h.value is not None]
        median = round(statistics.median(values), 3) if values else None
        medians[key] = median
        some = next(h for h in found if h is not None)
        cells = "".join(f"{'-' if h is None or h.value is None else f'{h.value:g}':>10}" for h in found)
        lines.append(f"{key:<34}{cells}{'-' if median is None else f'{median:g}':>10}  {some.unit} {some.goal}")
    return lines, medians


def _interrupted(signum: int, _: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds every `with`: servers stopped, state removed


def describe_hash_on_arrival(opts: Options) -> str:
    """The servers' --hash-on-arrival as the header prints it."""
    if opts.hash_on_arrival is not None:
        return str(opts.hash_on_arrival)
    return f"{ON_LOOP_MAX_COMPRESSIONS} (the servers' default)"


def main(argv: list[str] | None = None) -> int:
    args, opts = parse(argv)
    signal.signal(signal.SIGTERM, _interrupted)
    machine = {
        "cores": probes.cores(),
        "backend": native.backend(),
        "lanes": native.lanes(),
        "python": f"{platform.python_version()} from {sys.base_prefix}",  # builds differ in speed (README)
    }
    print(
        f"dynwork benchmark: rows {','.join(args.rows)}, {args.runs} run(s), {machine['cores']} cores, "
        f"native {machine['backend']} ({machine['lanes']} lanes), python {machine['python']}\n"
        "baseline: 2 bare aiohttp processes (PUT /enqueue into a dict, POST /pullCompleted pops; no disk, "
        f"no workers), the same raw keep-alive client, concurrency {opts.concurrency}, jobs alternating servers\n"
        f"dynwork servers: --hash-on-arrival {describe_hash_on_arrival(opts)} (jobs of at most that many iterations "
        "are hashed by the server that accepts them, the others go through a worker)"
    )
    runs: list[dict[str, RowResult]] = []
    for i in range(args.runs):
        if args.runs > 1:
            print(f"\n===== run {i + 1} of {args.runs} =====")
        runs.append({name: run_row(name, opts) for name in args.rows})
    lines, medians = closing_table(runs)
    print("\nheadlines (x: dynwork over the same run's baseline, or over the machine's own disk/kernel)")
    print("\n".join(lines))
    ok = all(row.ok for run in runs for row in run.values())
    if args.json:
        options = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(opts).items()}
        doc: dict[str, Any] = {
            "options": options,
            "machine": machine,
            "runs": [{name: row.to_json() for name, row in run.items()} for run in runs],
            "medians": medians,
            "ok": ok,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
