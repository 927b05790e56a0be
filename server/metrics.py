"""GET /metrics: the server's Prometheus metrics, from prometheus_client, in its own registry.

Counters and histograms are fed by the event hooks (server/events.py) as things happen; gauges
are read from the server's parts at scrape time by a collector (nothing is stored for them).
Label sets are bounded: refusals by a fixed set of reasons, workers by state, and the per-worker
rate only for workers the registry still knows (a forgotten worker's series is gone with it).

Names follow the Prometheus conventions: `dynwork_` prefix, `_total` counters, base units in the
name (`_seconds`, `_bytes`). The list, with what each means, is in docs/monitoring.md.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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


class Metrics(Events):
    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client; process-wide, as wanted here: no `_created` twin series
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.enqueued_total = Counter("dynwork_jobs_enqueued_total", "Jobs stored durably.", registry=r)
        self.leased_total = Counter("dynwork_jobs_leased_total", "Leases handed to workers (one per job).", registry=r)
        self.completed_total = Counter("dynwork_jobs_completed_total", "Jobs finished with a result.", registry=r)
        self.failed_total = Counter("dynwork_jobs_failed_total", "Jobs finished as failed.", registry=r)
        self.retried_total = Counter(
            "dynwork_jobs_retried_total", "Leases that ended without a result, their jobs queued again.", registry=r
        )
        self.handed_total = Counter(
            "dynwork_results_handed_out_total", "Results handed to pullCompleted clients (confirmed).", registry=r
        )
        self.refusals = Counter(
            "dynwork_requests_refused_total", "Requests refused, by reason.", ["reason"], registry=r
        )
        for reason in REFUSAL_REASONS:
            self.refusals.labels(reason)  # every series exists from the start: rates need no gaps
        self.enqueue_seconds = Histogram(
            "dynwork_enqueue_seconds", "Time to take one enqueue: body read, stored, committed.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "dynwork_queue_wait_seconds", "From (re)queued to leased.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.run_time = Histogram(
            "dynwork_run_seconds", "From leased to finished, for the lease that finished the job.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.end_to_end = Histogram(
            "dynwork_end_to_end_seconds", "From enqueued to finished.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.commit_size = Histogram(
            "dynwork_store_commit_operations", "Operations per group commit of the store.",
            buckets=COMMIT_SIZE_BUCKETS, registry=r,
        )  # fmt: skip
        self.fsync_seconds = Histogram(
            "dynwork_store_durable_commit_seconds", "Time of a durable (fsynced) group commit.",
            buckets=FSYNC_BUCKETS, registry=r,
        )  # fmt: skip

    def watch(self, node: Node) -> None:
        """Read the gauges from this node's parts at every scrape."""
        self.registry.register(NodeGauges(node))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # -- the event hooks (hot path: O(1) each) ---------------------------------------------
    def enqueued(self, job: Job, seconds: float) -> None:
        self.enqueued_total.inc()
        self.enqueue_seconds.observe(seconds)

    def leased(self, leases: Sequence[Lease]) -> None:
        if leases:
            self.leased_total.inc(len(leases))
            for lease in leases:
                self.queue_wait.observe(max(0.0, lease.started - lease.job.waiting_since))

    def requeued(self, leases: Sequence[Lease], why: str) -> None:
        self.retried_total.inc(len(leases))

    def finished(self, job: Job, error: str | None, worker: str | None, lease: Lease | None) -> None:
        (self.completed_total if error is None else self.failed_total).inc()
        now = time.monotonic()
        if lease is not None and lease.started:
            self.run_time.observe(max(0.0, now - lease.started))
        if job.enqueued_mono:
            self.end_to_end.observe(max(0.0, now - job.enqueued_mono))

    def handed_out(self, work_ids: Sequence[str]) -> None:
        self.handed_total.inc(len(work_ids))

    def refused(self, reason: str) -> None:
        self.refusals.labels(reason if reason in REFUSAL_REASONS else "other").inc()

    def committed(self, operations: int, durable: bool, seconds: float) -> None:
        self.commit_size.observe(operations)
        if durable:
            self.fsync_seconds.observe(seconds)


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
