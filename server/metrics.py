"""GET /metrics: the server's Prometheus metrics, from prometheus_client, in its own registry.

Counters and histograms are fed by the event hooks (server/events.py) as things happen, as plain
numbers that one thread each keeps (no lock on the hot path), and become Prometheus families only
when scraped; gauges are read from the server's parts at scrape time (nothing is stored for them).
Label sets are bounded: refusals by a fixed set of reasons, workers by state, and the per-worker
rate only for workers the registry still knows (a forgotten worker's series is gone with it).

Names follow the Prometheus conventions: `dynwork_` prefix, `_total` counters, base units in the
name (`_seconds`, `_bytes`). The list, with what each means, is in docs/monitoring.md.
"""

from __future__ import annotations

import bisect
import itertools
import shutil
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from server.events import Events

if TYPE_CHECKING:
    from server.jobs import Job
    from server.node import Node
    from server.scheduler import Lease

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REFUSAL_REASONS = (
    "bad_request", "unauthenticated", "not_found", "conflict", "too_large", "body_timeout", "queue_full",
    "closing", "too_many_waits", "peer_unreachable", "storage", "connections", "other",
)  # fmt: skip
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
COMMIT_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)
GUARD_STATES = ("ok", "capped", "backoff", "suspended")


class _Histogram:
    """A histogram's bucket counts and sum, kept by one thread without a lock (the event loop, or
    the store's writer for the commit figures) and read at scrape time: prometheus_client's own
    takes a lock per bucket and per sum, several microseconds a job on the hot path."""

    __slots__ = ("bounds", "counts", "total", "upper")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        # the `le` labels, spelled as prometheus_client spells them
        self.upper = [floatToGoString(b) for b in self.bounds] + ["+Inf"]  # type: ignore[no-untyped-call]  # untyped in prometheus_client
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # the first bound >= value: `le`
        self.total += value

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        counts = list(self.counts)  # a copy: the writer thread may add to its own meanwhile
        buckets = list(zip(self.upper, itertools.accumulate(counts), strict=True))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.total)


# (name without _total, help, attribute of Metrics)
_COUNTERS = (
    ("dynwork_jobs_enqueued", "Jobs stored durably.", "enqueued_total"),
    ("dynwork_jobs_leased", "Leases handed to workers (one per job).", "leased_total"),
    ("dynwork_jobs_completed", "Jobs finished with a result.", "completed_total"),
    ("dynwork_jobs_failed", "Jobs finished as failed.", "failed_total"),
    ("dynwork_jobs_retried", "Leases that ended without a result, their jobs queued again.", "retried_total"),
    ("dynwork_results_handed_out", "Results handed to pullCompleted clients (confirmed).", "handed_total"),
)
# (name, help, attribute of Metrics)
_HISTOGRAMS = (
    ("dynwork_enqueue_seconds", "Time to take one enqueue: body read, stored, committed.", "enqueue_seconds"),
    ("dynwork_queue_wait_seconds", "From (re)queued to leased.", "queue_wait"),
    ("dynwork_run_seconds", "From leased to finished, for the lease that finished the job.", "run_time"),
    ("dynwork_end_to_end_seconds", "From enqueued to finished.", "end_to_end"),
    ("dynwork_store_commit_operations", "Operations per group commit of the store.", "commit_size"),
    ("dynwork_store_durable_commit_seconds", "Time of a durable (fsynced) group commit.", "fsync_seconds"),
)


class Metrics(Events):
    """The counters and histograms, fed by the event hooks: plain numbers, each kept by one
    thread, turned into Prometheus families only when scraped."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.enqueued_total = self.leased_total = self.completed_total = self.failed_total = 0
        self.retried_total = self.handed_total = 0
        # every reason counted from the start: rates need no gaps
        self.refusals = dict.fromkeys(REFUSAL_REASONS, 0)
        self.enqueue_seconds = _Histogram(LATENCY_BUCKETS)
        self.queue_wait = _Histogram(LATENCY_BUCKETS)
        self.run_time = _Histogram(LATENCY_BUCKETS)
        self.end_to_end = _Histogram(LATENCY_BUCKETS)
        self.commit_size = _Histogram(COMMIT_SIZE_BUCKETS)  # these two: the store's writer thread
        self.fsync_seconds = _Histogram(FSYNC_BUCKETS)
        self.registry.register(_EventFamilies(self))

    def watch(self, node: Node) -> None:
        """Read the gauges from this node's parts at every scrape."""
        self.registry.register(NodeGauges(node))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # -- the event hooks (hot path: O(1) each) ---------------------------------------------
    def enqueued(self, job: Job, seconds: float) -> None:
        self.enqueued_total += 1
        self.enqueue_seconds.observe(seconds)

    def leased(self, leases: Sequence[Lease]) -> None:
        self.leased_total += len(leases)
        for lease in leases:
            self.queue_wait.observe(max(0.0, lease.started - lease.job.waiting_since))

    def requeued(self, leases: Sequence[Lease], why: str) -> None:
        self.retried_total += len(leases)

    def finished(self, job: Job, error: str | None, worker: str | None, lease: Lease | None) -> None:
        if error is None:
            self.completed_total += 1
        else:
            self.failed_total += 1
        now = time.monotonic()
        if lease is not None and lease.started:
            self.run_time.observe(max(0.0, now - lease.started))
        if job.enqueued_mono:
            self.end_to_end.observe(max(0.0, now - job.enqueued_mono))

    def handed_out(self, work_ids: Sequence[str]) -> None:
        self.handed_total += len(work_ids)

    def refused(self, reason: str) -> None:
        self.refusals[reason if reason in self.refusals else "other"] += 1

    def committed(self, operations: int, durable: bool, seconds: float) -> None:
        self.commit_size.observe(operations)
        if durable:
            self.fsync_seconds.observe(seconds)


class _EventFamilies(Collector):
    """The counters and histograms of a Metrics, as Prometheus families at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        for name, documentation, attribute in _COUNTERS:
            yield CounterMetricFamily(name, documentation, value=getattr(m, attribute))
        refusals = CounterMetricFamily("dynwork_requests_refused", "Requests refused, by reason.", labels=["reason"])
        for reason, count in m.refusals.items():
            refusals.add_metric([reason], count)
        yield refusals
        for name, documentation, attribute in _HISTOGRAMS:
            yield getattr(m, attribute).family(name, documentation)


class NodeGauges(Collector):
    """The gauges, read from the node's parts when Prometheus scrapes (bounded label sets)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node = self.node
        scheduler = node.scheduler
        yield _gauge("dynwork_jobs_queued", "Jobs waiting in the queue.", len(scheduler.queued))
        yield _gauge("dynwork_jobs_running", "Jobs leased to a worker now.", len(scheduler.leases))
        yield _gauge("dynwork_oldest_queued_age_seconds", "Age of the oldest queued job.", scheduler.oldest_wait_s())
        yield _gauge(
            "dynwork_backlog_cost",
            "Summed cost of the queued jobs, in the workers' rate units.",
            scheduler.backlog_cost,
        )
        workers = GaugeMetricFamily("dynwork_workers", "Workers of this server's fleet by state.", labels=["state"])
        status = node.autoscaler.status() if node.autoscaler else {}
        for state in ("live", "starting", "busy", "foreign"):
            workers.add_metric([state], float(status.get(state, 0)))
        workers.add_metric(["reporting"], float(len(node.registry.seen_within(node.settings.worker_dead_s))))
        yield workers
        loans = GaugeMetricFamily("dynwork_loans", "Worker quota borrowed from and lent to the peer.", labels=["way"])
        loans.add_metric(["borrowed"], float(node.loans.borrowed))
        loans.add_metric(["lent"], float(node.loans.lent))
        yield loans
        if node.peer is not None:
            yield _gauge("dynwork_peer_reachable", "1 while the peer answers, else 0.", float(node.peer.reachable()))
        guard = GaugeMetricFamily(
            "dynwork_launch_guard_state", "1 for the launch guard's current state.", labels=["state"]
        )
        current = node.guard.state if node.launcher else "ok"
        for state in GUARD_STATES:
            guard.add_metric([state], float(current == state))
        yield guard
        guard_waits = node.guard.failures and node.guard.retry_at - node.guard.clock()
        yield _gauge(
            "dynwork_launch_guard_retry_in_seconds",
            "Seconds until the launch guard tries again after a failure (0: not waiting).",
            max(0.0, guard_waits),
        )
        yield _gauge(
            "dynwork_launch_failures", "Launch calls failed in a row (0: launching works).", node.guard.failures
        )
        launched = CounterMetricFamily("dynwork_workers_launched", "Workers this server has launched.")
        launched.add_metric([], float(node.guard.launched_total))
        yield launched
        hasher = scheduler.hasher
        hashed = CounterMetricFamily(
            "dynwork_arrival_hashed", "Jobs hashed on arrival by this server, by where.", labels=["where"]
        )
        hashed.add_metric(["loop"], float(hasher.on_loop))
        hashed.add_metric(["thread"], float(hasher.in_thread))
        yield hashed
        batches = CounterMetricFamily(
            "dynwork_arrival_batches", "Batches the hashing thread ran (jobs that joined one are in it)."
        )
        batches.add_metric([], float(hasher.batches))
        yield batches
        try:
            disk = shutil.disk_usage(node.settings.state_dir)
        except OSError:  # not created yet, or gone: absent rather than a failed scrape
            pass
        else:
            yield _gauge("dynwork_state_dir_free_bytes", "Free bytes on the state directory's filesystem.", disk.free)
            yield _gauge("dynwork_state_dir_size_bytes", "Size of the state directory's filesystem.", disk.total)
        yield _gauge(
            "dynwork_health_problems", "Background tasks failing now (0: healthy).", float(len(node.health.problems()))
        )
        rate = GaugeMetricFamily(
            "dynwork_worker_rate", "A live worker's measured hashing rate, cost units per second.", labels=["worker"]
        )
        for info in node.registry.seen_within(node.settings.worker_dead_s):
            if info.rate:
                rate.add_metric([info.worker_id], info.rate)
        yield rate


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))
