"""`python -m client.benchmark`: the whole system's throughput and latency, with a same-run baseline.

It starts its own two servers (one warm local worker each) on free loopback ports with a
throw-away state dir, so it never disturbs a cluster started by `make up`. The baseline is a
bare aiohttp server answering PUT /enqueue with a constant id under the same client load: the
machine's HTTP ceiling, measured in the same run, so the ratio survives a noisy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web

from client import loadgen
from client.localcluster import LocalCluster, LocalClusterError, free_port, wait_for
from native.reference import chain

# -- baseline: a server that does nothing ---------------------------------------------------------


def serve_null(port: int) -> None:
    async def enqueue(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"work_id": "null.1.aaaaaa"})

    app = web.Application()
    app.router.add_put("/enqueue", enqueue)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def http_ceiling(url: str, requests: int, concurrency: int, body: bytes) -> float:
    """PUT /enqueue requests per second against `url` with the load generator's own client."""
    cfg = loadgen.BenchConfig((url,), jobs=requests, concurrency=concurrency)
    transport = loadgen.make_transport(cfg, concurrency)
    target = url + "/enqueue?iterations=1"
    counter = iter(range(requests))

    async def client() -> None:
        for _ in counter:
            await transport.send("PUT", target, body=body, headers={}, timeout_s=cfg.http_timeout_s)

    try:
        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return requests / (time.perf_counter() - start)
    finally:
        await transport.close()


def hashlib_rate(seconds: float = 1.0) -> float:
    """Iterations per second of the plain Python loop (native.reference), the hashing baseline."""
    digest, done, start = b"x" * 64, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        digest = chain(digest, 10_000)
        done += 10_000
    return done / (time.perf_counter() - start)


def long_jobs(servers: tuple[str, ...], jobs: int, iterations: int) -> float:
    """Iterations per second of the fleet on long jobs, enqueue of the first to result of the last."""
    cfg = loadgen.BenchConfig(
        servers, jobs=jobs, iterations=iterations, body_bytes=64, concurrency=8, verify=False, timeout_s=600
    )
    report = asyncio.run(loadgen.run(cfg))
    if not report.ok:
        raise SystemExit(f"benchmark: long jobs failed: {report.error}")
    return jobs * iterations / report.elapsed_s


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def measure_ceiling(args: argparse.Namespace, body: bytes) -> float:
    """The bare-aiohttp baseline, served by a child process of this module."""
    null_port = free_port()
    null = subprocess.Popen([sys.executable, "-m", "client.benchmark", "--null-server", str(null_port)])
    try:
        wait_for(lambda: _listening(null_port), 30, "the baseline server")
        return asyncio.run(http_ceiling(f"http://127.0.0.1:{null_port}", args.jobs, args.concurrency, body))
    finally:
        null.terminate()
        null.wait()


def measure_cluster(args: argparse.Namespace) -> tuple[loadgen.BenchReport, loadgen.BenchReport, float, float]:
    """(throughput report, latency report, hashlib it/s, fleet it/s on long jobs) of two fresh
    servers with one warm local worker each; the hashlib loop runs while they idle."""
    with tempfile.TemporaryDirectory(prefix="dynwork-bench-") as tmp:
        cluster = LocalCluster(
            Path(tmp), launcher="local", min_workers=1, max_workers=1, worker_threads=1, log_level="WARNING"
        )
        try:
            cluster.start()
            cluster.wait_for_workers(per_server=1)
            servers = cluster.urls
            short = {"iterations": 1, "body_bytes": args.body_bytes, "verify": True}
            through_cfg = loadgen.BenchConfig(servers, jobs=args.jobs, concurrency=args.concurrency, **short)
            latency_cfg = loadgen.BenchConfig(servers, jobs=args.latency_jobs, warmup=20, **short)
            through = asyncio.run(loadgen.run(through_cfg))
            latency = asyncio.run(loadgen.run(latency_cfg, latency=True))
            hashlib_its = hashlib_rate()
            fleet_its = long_jobs(servers, args.long_jobs, args.long_iterations)
        finally:
            cluster.close()
    return through, latency, hashlib_its, fleet_its


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.benchmark", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs in the throughput run (default 20000)")
    parser.add_argument("--latency-jobs", type=int, default=300, help="jobs in the latency run (default 300)")
    parser.add_argument("--body-bytes", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--long-jobs", type=int, default=64, help="jobs of --long-iterations (default 64)")
    parser.add_argument("--long-iterations", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--null-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.null_server:
        serve_null(args.null_server)
        return 0

    body = os.urandom(args.body_bytes)
    try:
        ceiling = measure_ceiling(args, body)
        through, latency, hashlib_its, fleet_its = measure_cluster(args)
    except LocalClusterError as exc:
        raise SystemExit(f"benchmark: {exc}") from None

    lat = loadgen.latency_summary(latency.latencies_s)
    e2e = loadgen.latency_summary(through.latencies_s)
    figures = {
        "baseline_null_http_put_per_s": round(ceiling),
        "jobs_per_s": round(through.jobs_per_s),
        "ratio_to_baseline": round(through.jobs_per_s / ceiling, 3),
        "throughput_ok": through.ok,
        "throughput_latency_ms": {k: round(v, 2) for k, v in e2e.items()},
        "warm_latency_ms": {k: round(v, 2) for k, v in lat.items()},
        "latency_ok": latency.ok,
        "hashlib_loop_it_per_s": round(hashlib_its),
        "workers_2_threads_it_per_s": round(fleet_its),
        "workers_ratio_to_hashlib": round(fleet_its / hashlib_its, 2),
    }
    print(f"baseline: bare aiohttp PUT /enqueue        {ceiling:10.0f} req/s")
    print(
        f"dynwork: enqueue -> pullCompleted, 2 servers {through.jobs_per_s:10.0f} jobs/s "
        f"({through.jobs_per_s / ceiling:.2f}x baseline; {through.completed}/{args.jobs} ok={through.ok})"
    )
    print(
        f"warm 1-iteration job, enqueue -> result:     p50 {lat['p50']:.2f} ms  p99 {lat['p99']:.2f} ms "
        f"({latency.completed} jobs, ok={latency.ok})"
    )
    print(
        f"hashing: {args.long_jobs} jobs x {args.long_iterations} iterations, 2 workers x 1 thread: "
        f"{fleet_its / 1e6:.2f} M it/s = {fleet_its / hashlib_its:.2f}x the hashlib loop "
        f"({hashlib_its / 1e6:.2f} M it/s, one thread)"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if through.ok and latency.ok else 1


if __name__ == "__main__":
    sys.exit(main())
