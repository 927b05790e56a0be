"""The load generator: its maths and bookkeeping on their own, then real runs against two real
servers. Jobs are completed by `Completer`, which speaks the real internal worker protocol (lease,
complete) with hashlib, so these tests depend on the servers and not on a compiled worker."""
from __future__ import annotations

import asyncio
import hashlib
import json
import math
import statistics

import pytest
from hypothesis import given, strategies as st

from client import loadgen
from client.loadgen import BenchConfig, BenchReport, percentile
from tests.cluster import Completer, free_port

# -- percentiles ---------------------------------------------------------------------------------

def test_percentile_of_known_values():
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 25) == pytest.approx(1.75)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(values, 101)


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=2, max_size=200),
       st.integers(min_value=1, max_value=99))
def test_percentile_matches_statistics_inclusive_quantiles(values, q):
    ordered = sorted(values)
    expected = statistics.quantiles(ordered, n=100, method="inclusive")[q - 1]
    assert percentile(ordered, q) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert ordered[0] <= percentile(ordered, q) <= ordered[-1]


def test_latency_summary_is_in_milliseconds():
    summary = loadgen.latency_summary([0.001 * i for i in range(1, 101)])
    assert summary["p50"] == pytest.approx(50.5)
    assert summary["p99"] == pytest.approx(99.01)
    assert summary["max"] == pytest.approx(100.0)
    assert summary["mean"] == pytest.approx(50.5)
    assert all(math.isnan(v) for v in loadgen.latency_summary([]).values())


def test_chain_is_the_iterated_sha512():
    assert loadgen.chain(b"", 1) == hashlib.sha512(b"").hexdigest()
    assert loadgen.chain(b"abc", 2) == hashlib.sha512(hashlib.sha512(b"abc").digest()).hexdigest()


def test_config_rejects_nonsense():
    for bad in ({"servers": ()}, {"jobs": 0}, {"iterations": 0}, {"concurrency": 0}, {"body_bytes": -1},
                {"timeout_s": 0}, {"http_timeout_s": 0}, {"client": "curl"}, {"pull_interval_s": -1}):
        with pytest.raises(ValueError):
            BenchConfig(**{"servers": ("http://x:1",), **bad})


def test_response_heads_are_parsed_strictly():
    status, headers = loadgen._parse_head(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\nX-A:b:c")
    assert status == 503 and headers["retry-after"] == "2" and headers["x-a"] == "b:c"
    for bad in (b"SSH-2.0-OpenSSH", b"HTTP/1.1 abc OK", b""):
        with pytest.raises(ValueError):
            loadgen._parse_head(bad)


# -- bookkeeping ---------------------------------------------------------------------------------

def tracker(jobs: int, verify: bool = False):
    report = BenchReport("throughput", BenchConfig(servers=("http://x:1",), jobs=jobs, verify=verify))
    return report, loadgen._Tracker(report, verify)


def test_tracker_matches_results_whichever_comes_first():
    report, t = tracker(3)
    t.ack("a", 1.0, None)
    t.pulled([{"work_id": "a", "result": "00"}, {"work_id": "b", "result": "00"},
              {"work_id": "x", "result": "00"}], 1.5)  # b's ack is still in flight; x is someone else's
    t.ack("b", 1.6, None)  # pulled before the ack was processed: latency 0, not negative
    t.ack("c", 2.0, None)
    assert not t.all_seen.is_set()
    t.pulled([{"work_id": "c", "result": None, "error": "boom"}], 2.25)
    assert t.all_seen.is_set()
    assert (report.completed, report.failed) == (3, 1)
    assert sorted(report.latencies_s) == [0.0, 0.25, 0.5]
    assert list(t.early) == ["x"]  # counted as foreign by run_throughput
    assert t.last_seen == 2.25


def test_tracker_verifies_results_against_hashlib():
    report, t = tracker(2, verify=True)
    t.ack("good", 0.0, b"body")
    t.ack("bad", 0.0, b"body")
    t.pulled([{"work_id": "good", "result": loadgen.chain(b"body", 1)}, {"work_id": "bad", "result": "00" * 64}], 1)
    assert (report.completed, report.wrong, report.ok) == (2, 1, False)


def test_report_text_and_json():
    cfg = BenchConfig(servers=("http://a:1", "http://b:2"), jobs=4, verify=True)
    report = BenchReport("throughput", cfg, completed=4, foreign=2, elapsed_s=2.0, enqueue_s=1.0,
                         latencies_s=[0.001, 0.002, 0.003, 0.004])
    data = report.to_json()
    assert data["jobs_per_s"] == 2.0 and data["complete"] and data["ok"]
    assert data["latency_ms"]["p50"] == 2.5 and data["latency_ms"]["max"] == 4.0
    assert data["foreign"] == 2 and data["wrong"] == 0
    json.dumps(data, allow_nan=False)
    text = report.format()
    assert "2 jobs/s" in text and "p50 2.50 ms" in text and "foreign results 2" in text
    short = BenchReport("throughput", cfg, completed=1, error="timed out")
    assert not short.complete and "stopped early: timed out" in short.format()
    json.dumps(short.to_json(), allow_nan=False)  # no latencies: null, not NaN


# -- real runs -----------------------------------------------------------------------------------

def urls(cluster):
    return tuple(s.url for s in cluster.servers)


@pytest.mark.parametrize("client", loadgen.CLIENTS)
def test_throughput_run_over_both_servers_counts_foreign_results(cluster, client):
    stray = cluster.b.enqueue(b"not the bench's", 1)
    Completer(cluster.servers, cluster.token).step(cluster.b)  # completed, not pulled: someone else's result
    cfg = BenchConfig(servers=urls(cluster), jobs=300, body_bytes=100, concurrency=16, verify=True, timeout_s=120,
                      client=client)
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
    assert all(0 < e <= total for e, total in zip(report.enqueue_latencies_s, report.latencies_s))
    # Latency mode leaves the results for pullCompleted: 6 jobs including the warm-up.
    assert len(cluster.a.pull(1000)) == 6


@pytest.mark.parametrize("client", loadgen.CLIENTS)
def test_refused_jobs_stop_the_run_with_the_server_message(make_cluster, client):
    c = make_cluster(launcher="none", max_body_bytes=1000)
    report = asyncio.run(loadgen.run(BenchConfig(servers=urls(c), jobs=10, body_bytes=2000, timeout_s=60,
                                                 client=client)))
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
    cfg = BenchConfig(servers=(silent_url, cluster.a.url), jobs=4, concurrency=2, http_timeout_s=0.5, timeout_s=60,
                      client=client)
    report = asyncio.run(loadgen.run(cfg))
    assert report.error == f"{silent_url} gave no answer to an enqueue: timed out"
    assert report.error_kind == "lost"
    assert not report.complete
