"""The load generator: real runs against two real servers. Jobs are completed by `Completer`, which
speaks the real internal worker protocol (lease, complete) with hashlib, so these tests depend on
the servers and not on a compiled worker."""

from __future__ import annotations

import asyncio

import pytest

from client import loadgen
from client.loadgen import BenchConfig
from tests.cluster import Completer, free_port

# Its maths, bookkeeping, HTTP client and enqueue rules on their own: tests/unit/test_loadgen_*.py.

# -- real runs -----------------------------------------------------------------------------------


def urls(cluster):
    return tuple(s.url for s in cluster.servers)


@pytest.mark.parametrize("client", loadgen.CLIENTS)
def test_throughput_run_over_both_servers_counts_foreign_results(cluster, client):
    stray = cluster.b.enqueue(b"not the bench's", 1)
    Completer(cluster.servers, cluster.token).step(cluster.b)  # completed, not pulled: someone else's result
    cfg = BenchConfig(
        servers=urls(cluster), jobs=300, body_bytes=100, concurrency=16, verify=True, timeout_s=120, client=client
    )
    with Completer(cluster.servers, cluster.token):
        report = asyncio.run(loadgen.run(cfg))
    assert report.error is None, report.error
    assert (report.completed, report.failed, report.wrong, report.foreign) == (300, 0, 0, 1)
    assert report.ok and len(report.latencies_s) == 300 and all(x >= 0 for x in report.latencies_s)
    assert report.elapsed_s >= report.enqueue_s > 0
    assert len(report.enqueue_latencies_s) == 300
    # The bench pulled everything, its own results and the stray one.
    assert cluster.a.pull(1000) == [] and cluster.b.pull(1000) == []
    assert cluster.b.work(stray).json()["status"] == "completed"


def test_throughput_run_reports_failed_jobs(make_cluster):
    c = make_cluster(launcher="none", max_attempts=1)
    doomed = f"{c.a.name}.2."  # the second job on the first server
    with Completer(c.servers, c.token, fail=lambda work_id: work_id.startswith(doomed)):
        report = asyncio.run(loadgen.run(BenchConfig(servers=urls(c), jobs=20, concurrency=4, timeout_s=120)))
    assert report.complete and report.failed == 1 and not report.ok


@pytest.mark.parametrize("client", loadgen.CLIENTS)
def test_latency_run_one_job_at_a_time(cluster, client):
    cfg = BenchConfig(servers=urls(cluster), jobs=5, warmup=1, verify=True, timeout_s=120, client=client)
    with Completer(cluster.servers, cluster.token):
        report = asyncio.run(loadgen.run(cfg, latency=True))
    assert report.error is None and report.ok
    assert report.completed == 5 and len(report.latencies_s) == 5
    assert all(0 < e <= total for e, total in zip(report.enqueue_latencies_s, report.latencies_s, strict=True))
    assert report.answered_latencies_s == []  # each went to a worker (this cluster hashes nothing on arrival)
    # Latency mode leaves the results for pullCompleted: 6 jobs including the warm-up.
    assert len(cluster.a.pull(1000)) == 6


def test_latency_run_takes_the_result_from_the_ack_of_a_job_hashed_on_arrival(make_cluster):
    c = make_cluster(launcher="none", hash_on_arrival=512)  # the servers' default; no worker at all
    cfg = BenchConfig(servers=urls(c), jobs=4, warmup=1, verify=True, timeout_s=120)
    report = asyncio.run(loadgen.run(cfg, latency=True))
    assert report.ok and report.wrong == 0
    assert report.answered_latencies_s == report.enqueue_latencies_s and len(report.answered_latencies_s) == 4


@pytest.mark.parametrize("client", loadgen.CLIENTS)
def test_refused_jobs_stop_the_run_with_the_server_message(make_cluster, client):
    c = make_cluster(launcher="none", max_body_bytes=1000)
    report = asyncio.run(
        loadgen.run(BenchConfig(servers=urls(c), jobs=10, body_bytes=2000, timeout_s=60, client=client))
    )
    assert report.completed == 0 and not report.complete
    assert "HTTP 413" in report.error and "limit" in report.error and report.error_kind == "refused"


@pytest.mark.parametrize("client", loadgen.CLIENTS)
def test_no_server_reachable_is_a_clear_error(client):
    dead = (f"http://127.0.0.1:{free_port()}",)
    report = asyncio.run(loadgen.run(BenchConfig(servers=dead, jobs=3, timeout_s=30, client=client)))
    assert report.error.startswith("no server accepts jobs") and "connection refused" in report.error
    assert report.error_kind == "unreachable"


@pytest.mark.parametrize("client", loadgen.CLIENTS)
def test_an_unanswered_enqueue_stops_the_run_instead_of_being_sent_twice(cluster, silent_url, client):
    cfg = BenchConfig(
        servers=(silent_url, cluster.a.url), jobs=4, concurrency=2, http_timeout_s=0.5, timeout_s=60, client=client
    )
    report = asyncio.run(loadgen.run(cfg))
    assert report.error == f"{silent_url} gave no answer to an enqueue: timed out"
    assert report.error_kind == "lost"
    assert not report.complete
