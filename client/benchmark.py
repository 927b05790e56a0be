"""`python -m client.benchmark`: the whole system's throughput and latency, with a same-run baseline.

It starts its own two servers (one warm local worker each) on free loopback ports with a
throw-away state dir, so it never disturbs a cluster started by `make up`. The baseline is a
bare aiohttp server answering PUT /enqueue with a constant id under the same client load: the
machine's HTTP ceiling, measured in the same run, so the ratio survives a noisy machine.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from aiohttp import web

from client import loadgen


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"benchmark: timed out waiting for {what}")
        time.sleep(0.1)


def get_json(url: str):
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return json.loads(resp.read())
    except OSError:
        return None


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
    counter = iter(range(requests))

    async def client() -> None:
        for _ in counter:
            await transport.request(0, "PUT", "/enqueue?iterations=1", body)

    try:
        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return requests / (time.perf_counter() - start)
    finally:
        await transport.close()


def hashlib_rate(seconds: float = 1.0) -> float:
    """Iterations per second of the plain Python loop, the baseline of the hashing figures."""
    digest, done, start = hashlib.sha512(b"x" * 64).digest(), 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10_000):
            digest = hashlib.sha512(digest).digest()
        done += 10_000
    return done / (time.perf_counter() - start)


def long_jobs(servers: tuple[str, ...], jobs: int, iterations: int) -> float:
    """Iterations per second of the fleet on long jobs, enqueue of the first to result of the last."""
    report = asyncio.run(loadgen.run(loadgen.BenchConfig(servers, jobs=jobs, iterations=iterations,
                                                         body_bytes=64, concurrency=8, verify=False,
                                                         timeout_s=600)))
    if not report.ok:
        raise SystemExit(f"benchmark: long jobs failed: {report.error}")
    return jobs * iterations / report.elapsed_s


# -- the system under test -------------------------------------------------------------------------

class Cluster:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.token_file = base / "cluster.token"
        self.token_file.write_text(secrets.token_urlsafe(32))
        self.token_file.chmod(0o600)
        self.ports = [free_port(), free_port()]
        self.urls = [f"http://127.0.0.1:{p}" for p in self.ports]
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        for i, port in enumerate(self.ports):
            argv = [sys.executable, "-m", "server", "--port", str(port), "--peer", self.urls[1 - i],
                    "--state-dir", str(self.base / f"s{port}"), "--token-file", str(self.token_file),
                    "--launcher", "local", "--min-workers", "1", "--max-workers", "1", "--worker-threads", "1",
                    "--log-level", "WARNING"]
            log = open(self.base / f"s{port}.log", "ab")
            self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
        for url in self.urls:
            wait_until(lambda: get_json(url + "/healthz"), 60, f"{url} to answer")
            wait_until(lambda: (get_json(url + "/status") or {}).get("workers_reporting", 0) >= 1, 60,
                       f"a warm worker on {url}")

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.benchmark", description=__doc__.splitlines()[0])
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
    null_port = free_port()
    null = subprocess.Popen([sys.executable, "-m", "client.benchmark", "--null-server", str(null_port)])
    try:
        wait_until(lambda: _listening(null_port), 30, "the baseline server")
        ceiling = asyncio.run(http_ceiling(f"http://127.0.0.1:{null_port}", args.jobs,
                                           args.concurrency, body))
    finally:
        null.terminate()
        null.wait()

    with tempfile.TemporaryDirectory(prefix="dynwork-bench-") as tmp:
        cluster = Cluster(Path(tmp))
        try:
            cluster.start()
            servers = tuple(cluster.urls)
            through = asyncio.run(loadgen.run(loadgen.BenchConfig(
                servers, jobs=args.jobs, iterations=1, body_bytes=args.body_bytes,
                concurrency=args.concurrency, verify=True)))
            latency = asyncio.run(loadgen.run(loadgen.BenchConfig(
                servers, jobs=args.latency_jobs, iterations=1, body_bytes=args.body_bytes, warmup=20,
                verify=True), latency=True))
            hashlib_its = hashlib_rate()
            fleet_its = long_jobs(servers, args.long_jobs, args.long_iterations)
        finally:
            cluster.stop()

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
    print(f"dynwork: enqueue -> pullCompleted, 2 servers {through.jobs_per_s:10.0f} jobs/s "
          f"({through.jobs_per_s / ceiling:.2f}x baseline; {through.completed}/{args.jobs} ok={through.ok})")
    print(f"warm 1-iteration job, enqueue -> result:     p50 {lat['p50']:.2f} ms  p99 {lat['p99']:.2f} ms "
          f"({latency.completed} jobs, ok={latency.ok})")
    print(f"hashing: {args.long_jobs} jobs x {args.long_iterations} iterations, 2 workers x 1 thread: "
          f"{fleet_its / 1e6:.2f} M it/s = {fleet_its / hashlib_its:.2f}x the hashlib loop ({hashlib_its / 1e6:.2f} M it/s, one thread)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if through.ok and latency.ok else 1


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
