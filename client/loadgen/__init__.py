"""`dynwork bench`: a load generator for the public API.

Throughput mode enqueues `jobs` jobs over all servers (round-robin, bounded concurrency) while one
puller per server drains `POST /pullCompleted?top=1000` until every job of the bench has been seen.
jobs/s is measured end to end, from the first enqueue to the last result pulled; a job's latency
runs from its enqueue acknowledgement to the moment its result was pulled. pullCompleted hands each
result out once across both servers, so the bench must be the only puller: results that are not the
bench's own are counted as `foreign` and otherwise ignored.

Latency mode runs one job at a time: enqueue, then `GET /work/{id}?wait=S` on the same server until
it is finished, and reports percentiles of that round trip (after a few warm-up jobs that give the
autoscaler time to start a worker). Its results are not pulled.

The generator is kept cheap so that on a small machine it measures the servers, not itself: pooled
keep-alive connections, no per-job output, and by default a lean HTTP/1.1 client on asyncio
protocols (`rawhttp`) that spends about a third of the CPU per job of aiohttp's client
(`client="aiohttp"` selects that one instead, e.g. to compare with an aiohttp baseline). Both sit
behind common.http's Transport and follow its one retry policy (see `enqueue.Enqueuer`).

Modules: config (BenchConfig), report (BenchReport, latency_summary), tracker (results matched to
jobs), enqueue (PUT /enqueue and the stop reasons), rawhttp and transports (the HTTP clients),
runners (the two modes).
"""

from client.loadgen.config import CLIENTS, PULL_INTERVAL_S, BenchConfig
from client.loadgen.enqueue import BenchError, JobRefused, NoServer
from client.loadgen.report import BenchReport, latency_summary
from client.loadgen.runners import run, run_latency, run_throughput
from client.loadgen.transports import make_transport

__all__ = [
    "CLIENTS",
    "PULL_INTERVAL_S",
    "BenchConfig",
    "BenchError",
    "BenchReport",
    "JobRefused",
    "NoServer",
    "latency_summary",
    "make_transport",
    "run",
    "run_latency",
    "run_throughput",
]
