"""The counters and histograms behind GET /metrics, read back with prometheus_client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from server.jobs import Job
from server.metrics import COMMIT_SIZE_BUCKETS, REFUSAL_REASONS, Metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_histogram_counts_a_value_in_the_first_bucket_whose_bound_it_does_not_exceed():
    m = Metrics()
    for ops in (1, 2, 3, 2000, 2001):  # on a bound, between bounds, the last bound, past every bound
        m.committed(ops, durable=False, seconds=0.0)
    got = samples(m)
    bucket = {le: got[("dynwork_store_commit_operations_bucket", (("le", le),))] for le in ("1.0", "2.0", "5.0")}
    assert bucket == {"1.0": 1, "2.0": 2, "5.0": 3}
    assert got[("dynwork_store_commit_operations_bucket", (("le", "2000.0"),))] == 4
    assert got[("dynwork_store_commit_operations_bucket", (("le", "+Inf"),))] == 5
    assert got[("dynwork_store_commit_operations_count", ())] == 5
    assert got[("dynwork_store_commit_operations_sum", ())] == 1 + 2 + 3 + 2000 + 2001
    assert len([k for k in got if k[0] == "dynwork_store_commit_operations_bucket"]) == len(COMMIT_SIZE_BUCKETS) + 1
    assert ("dynwork_store_durable_commit_seconds_count", ()) in got  # relaxed commits are not timed
    assert got[("dynwork_store_durable_commit_seconds_count", ())] == 0


def test_counters_count_each_event_and_refusals_keep_to_their_reasons():
    m = Metrics()
    job = Job(seq=1, nonce="n", iterations=1, size=1, enqueued_at=0.0, enqueued_mono=1.0)
    m.enqueued(job, 0.002)
    m.finished(job, None, None, None)
    m.finished(job, "boom", "w1", None)
    m.handed_out(["a", "b", "c"])
    m.refused("queue_full")
    m.refused("something new")  # not a known reason: counted as "other", no new series
    got = samples(m)
    assert got[("dynwork_jobs_enqueued_total", ())] == 1
    assert got[("dynwork_jobs_completed_total", ())] == 1
    assert got[("dynwork_jobs_failed_total", ())] == 1
    assert got[("dynwork_results_handed_out_total", ())] == 3
    refused = {dict(k[1])["reason"]: v for k, v in got.items() if k[0] == "dynwork_requests_refused_total"}
    assert set(refused) == set(REFUSAL_REASONS)  # every series there from the start
    assert refused["queue_full"] == 1 and refused["other"] == 1 and sum(refused.values()) == 2
    assert got[("dynwork_enqueue_seconds_count", ())] == 1
    assert got[("dynwork_enqueue_seconds_bucket", (("le", "0.001"),))] == 0
    assert got[("dynwork_enqueue_seconds_bucket", (("le", "0.002"),))] == 1
    assert got[("dynwork_end_to_end_seconds_count", ())] == 2
    assert not any(name.endswith("_created") for name, _ in got)
