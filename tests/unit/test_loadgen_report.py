"""The load generator's figures on their own: config checks, latency summaries, the report's text
and JSON. (Its percentile is common.stats.percentile, tested in test_stats_cost.py.)"""

from __future__ import annotations

import hashlib
import json
import math

import pytest

from client.loadgen.config import BenchConfig
from client.loadgen.report import BenchReport, latency_summary
from client.loadgen.tracker import reference_result


def test_latency_summary_is_in_milliseconds():
    summary = latency_summary([0.001 * i for i in range(1, 101)])
    assert summary["p50"] == pytest.approx(50.5)
    assert summary["p99"] == pytest.approx(99.01)
    assert summary["max"] == pytest.approx(100.0)
    assert summary["mean"] == pytest.approx(50.5)
    assert all(math.isnan(v) for v in latency_summary([]).values())


def test_reference_result_is_the_iterated_sha512():
    assert reference_result(b"", 1) == hashlib.sha512(b"").hexdigest()
    assert reference_result(b"abc", 2) == hashlib.sha512(hashlib.sha512(b"abc").digest()).hexdigest()


def test_config_rejects_nonsense():
    for bad in (
        {"servers": ()},
        {"jobs": 0},
        {"iterations": 0},
        {"concurrency": 0},
        {"body_bytes": -1},
        {"timeout_s": 0},
        {"http_timeout_s": 0},
        {"client": "curl"},
        {"pull_interval_s": -1},
    ):
        with pytest.raises(ValueError):
            BenchConfig(**{"servers": ("http://x:1",), **bad})


def test_report_text_and_json():
    cfg = BenchConfig(servers=("http://a:1", "http://b:2"), jobs=4, verify=True)
    report = BenchReport(
        "throughput",
        cfg,
        completed=4,
        foreign=2,
        elapsed_s=2.0,
        enqueue_s=1.0,
        latencies_s=[0.001, 0.002, 0.003, 0.004],
    )
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


def test_latency_report_text():
    cfg = BenchConfig(servers=("http://a:1",), jobs=2, warmup=1, iterations=3)
    report = BenchReport("latency", cfg, completed=2, latencies_s=[0.01, 0.02], enqueue_latencies_s=[0.001, 0.002])
    text = report.format()
    assert text.startswith("bench --latency: 2 jobs one at a time (+1 warm-up) x 3 iterations, 64-byte bodies")
    assert "enqueue -> finished: p50 15.00 ms" in text and "foreign" not in text
    assert "in the PUT's ack" not in text  # no ack carried a result
    assert report.to_json()["concurrency"] == 1 and report.to_json()["wrong"] is None
    report.answered_latencies_s = [0.002]
    assert "in the PUT's ack:    p50 2.00 ms" in report.format() and report.to_json()["answered_with_result"] == 1
