"""server.timeline: the latency window, the failure ring, the sample ring and its cursors, the sampler."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.stats import percentile
from server.jobs import Job
from server.timeline import (
    FAILURES_KEPT,
    LATENCY_BUCKETS,
    LATENCY_RATIO,
    MAX_FAILURE_CHARS,
    SERIES,
    LatencyWindow,
    Recorder,
    Sample,
    Sampler,
    Timeline,
    bucket_value,
    latency_bucket,
)
from tests.unit.support import FakeClock


class Mono:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sample(t: float, queued: int = 0, **fields: object) -> Sample:
    values: dict[str, object] = dict.fromkeys(SERIES, 0) | {"queued": queued, "throughput": 0.0}
    values |= {"p50": None, "p95": None, "p99": None} | fields
    return Sample(t, **values)  # type: ignore[arg-type]


def test_buckets_cover_every_latency_and_grow_by_the_ratio():
    assert latency_bucket(0.0) == latency_bucket(-1.0) == latency_bucket(math.nan) == 0
    assert latency_bucket(1e12) == LATENCY_BUCKETS - 1
    assert bucket_value(latency_bucket(86_400.0)) == pytest.approx(86_400.0, rel=LATENCY_RATIO - 1)
    values = [bucket_value(b) for b in range(LATENCY_BUCKETS)]
    assert values == sorted(values)


@given(st.lists(st.floats(min_value=0.002, max_value=10_000.0), min_size=1, max_size=300))
def test_percentiles_are_within_one_bucket_of_the_exact_ones(latencies):
    window = LatencyWindow(Mono())
    for value in latencies:
        window.record(value)
    exact = sorted(latencies)
    for q, found in zip((50.0, 95.0, 99.0), window.percentiles(), strict=True):
        # the histogram answers the value of rank ceil(q% of n), which lies between the closest ranks
        low = exact[max(0, math.ceil(q / 100 * len(exact)) - 1)]
        assert found is not None and low / LATENCY_RATIO <= found <= low * LATENCY_RATIO
        assert found <= exact[-1] * LATENCY_RATIO and found >= percentile(exact, 0) / LATENCY_RATIO


def test_the_window_forgets_what_finished_more_than_a_minute_ago():
    clock = Mono()
    window = LatencyWindow(clock, window_s=60)
    assert window.percentiles() == [None, None, None]
    window.record(10.0)
    clock.now += 30
    window.record(0.1)
    window.record(0.1)
    assert window.count == 3 and window.percentiles([50.0])[0] == pytest.approx(0.1, rel=0.1)
    clock.now += 31  # the 10 s job is 61 s old
    assert window.percentiles([100.0])[0] == pytest.approx(0.1, rel=0.1) and window.count == 2
    clock.now += 60
    assert window.percentiles() == [None, None, None] and window.count == 0


def test_recording_keeps_one_small_histogram_per_second_whatever_the_throughput():
    clock = Mono()
    window = LatencyWindow(clock)
    for i in range(100_000):
        window.record(0.01 * (1 + i % 7))
        if i % 1000 == 0:
            clock.now += 1
    assert len(window._seconds) <= 61 and len(window._total) <= 7


def test_the_recorder_counts_completions_and_keeps_the_latest_failures():
    clock = FakeClock(wall=1000.0, mono=50.0)
    recorder = Recorder("a", clock)
    job = Job(seq=1, nonce="abcdef", iterations=5, size=3, enqueued_at=998.5, attempts=1, enqueued_mono=48.5)
    clock.step_wall(-3600)  # the latency is a monotonic duration: a wall clock step does not move it
    recorder.finished(job, None, "w1")
    assert recorder.completed_total == 1 and recorder.latency.percentiles([50.0])[0] == pytest.approx(1.5, rel=0.1)
    for seq in range(2, 2 + FAILURES_KEPT + 5):
        recorder.finished(Job(seq, "abcdef", 1, 0, 999.0, 3), "worker error: x\ny\x00" + "z" * 1000, "w2")
    assert recorder.failed_total == FAILURES_KEPT + 5 and len(recorder.failures) == FAILURES_KEPT
    newest = recorder.failures[-1]
    assert newest.work_id == f"a.{FAILURES_KEPT + 6}.abcdef" and (newest.worker, newest.attempts) == ("w2", 3)
    assert newest.error.startswith("worker error: x y ") and len(newest.error) == MAX_FAILURE_CHARS
    assert newest.error.isprintable() and newest.at == 1000.0 - 3600
    assert recorder.latency.count == 1  # failures have no latency


def test_the_ring_keeps_the_last_samples_and_answers_what_a_cursor_lacks():
    timeline = Timeline(capacity=5, epoch="e1")
    assert timeline.after(None) == (True, []) and timeline.cursor == "e1:0"
    for t in range(1, 8):
        timeline.add(sample(float(t), queued=t))
    assert len(timeline) == 5 and timeline.seq == 7 and timeline.latest().queued == 7
    full, rows = timeline.after(None)
    assert full and [s.t for s in rows] == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert timeline.after("e1:5") == (False, rows[-2:])
    assert timeline.after("e1:7") == (False, [])
    assert timeline.after("e1:2") == (False, rows)  # exactly the ring
    for stale in ("e1:1", "e1:8", "e2:7", "garbage", ""):  # too old, ahead (a restart), another run
        assert timeline.after(stale) == (True, rows), stale


def test_columns_round_values_and_merge_rebuilds_the_same_ring():
    source = Timeline(capacity=10, epoch="ab")
    source.add(sample(1.04, queued=3, throughput=1.23456, p50=0.123456, p95=None))
    source.add(sample(2.0, queued=4, workers=2, busy=1))
    columns = source.columns(None)
    assert columns["epoch"] == "ab" and columns["seq"] == 2 and columns["full"] is True
    assert columns["t"] == [1.0, 2.0] and columns["queued"] == [3, 4] and columns["throughput"] == [1.23, 0.0]
    assert columns["p50"] == [0.1235, None] and columns["workers"] == [0, 2] and columns["busy"] == [0, 1]

    mirror = Timeline(capacity=10)
    mirror.merge(columns)
    assert (mirror.epoch, mirror.seq, len(mirror)) == ("ab", 2, 2)
    source.add(sample(3.0, queued=5))
    mirror.merge(source.columns(mirror.cursor))  # only the new sample travels
    assert mirror.seq == 3 and [s.queued for s in mirror.after(None)[1]] == [3, 4, 5]
    restarted = Timeline(capacity=10, epoch="cd")
    restarted.add(sample(9.0, queued=9))
    assert restarted.columns(mirror.cursor)["full"] is True
    mirror.merge(restarted.columns(mirror.cursor))
    assert mirror.cursor == "cd:1" and [s.queued for s in mirror.after(None)[1]] == [9]


def test_the_sampler_measures_throughput_over_the_last_samples():
    clock = FakeClock()
    recorder = Recorder("a", clock)
    sampler = Sampler(recorder, clock)
    first = sampler.sample(queued=7, running=2, workers=[True, False, True])
    assert (first.queued, first.running, first.workers, first.busy, first.throughput) == (7, 2, 3, 2, 0.0)
    assert first.t == clock.wall() and first.p50 is None
    job = Job(1, "abcdef", 1, 0, clock.wall())
    for _ in range(10):
        clock.advance(1.0)
        for _ in range(4):
            recorder.finished(job, None, None)
        latest = sampler.sample(queued=0, running=0, workers=[])
    assert latest.throughput == pytest.approx(4.0)
    assert latest.p50 is not None and latest.p99 is not None
    for _ in range(6):  # five quiet seconds later the window holds none of them
        clock.advance(1.0)
        latest = sampler.sample(queued=0, running=0, workers=[])
    assert latest.throughput == 0.0
