"""What operators see: Prometheus metrics, a job's history, searchable logs without secrets.
Real servers and workers; metrics parsed with prometheus_client's own parser."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from common.credentials import Role, derive, worker_credential
from tests.cluster import ROOT, Completer, http, reference, wait_for, worker_headers

COUNTERS = (
    "dynwork_jobs_enqueued", "dynwork_jobs_leased", "dynwork_jobs_completed", "dynwork_jobs_failed",
    "dynwork_jobs_retried", "dynwork_results_handed_out", "dynwork_requests_refused",
)  # fmt: skip
HISTOGRAMS = (
    "dynwork_enqueue_seconds", "dynwork_queue_wait_seconds", "dynwork_run_seconds", "dynwork_end_to_end_seconds",
    "dynwork_store_commit_operations", "dynwork_store_durable_commit_seconds",
)  # fmt: skip
GAUGES = (
    "dynwork_jobs_queued", "dynwork_jobs_running", "dynwork_oldest_queued_age_seconds", "dynwork_backlog_cost",
    "dynwork_workers", "dynwork_loans", "dynwork_peer_reachable", "dynwork_launch_guard_state",
    "dynwork_health_problems", "dynwork_worker_rate",
)  # fmt: skip


def scrape(server, headers: dict[str, str] | None = None) -> dict[str, object]:
    resp = http("GET", server.url + "/metrics", headers=headers)
    assert resp.status == 200, resp.body[:200]
    return {family.name: family for family in text_string_to_metric_families(resp.body.decode())}


def value(families: dict[str, object], name: str, labels: dict[str, str] | None = None, suffix: str = "") -> float:
    family = families[name]
    for sample in family.samples:  # type: ignore[attr-defined]
        if sample.name == name + suffix and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
            return float(sample.value)
    raise AssertionError(f"no sample {name}{suffix} {labels}")


def test_metrics_families_count_what_happens(make_cluster):
    c = make_cluster(launcher="none", worker_dead_s=1)
    before = scrape(c.a)
    assert {f"{name}" for name in COUNTERS} <= set(before)  # counters are named without _total by the parser
    assert set(HISTOGRAMS) | set(GAUGES) - {"dynwork_worker_rate"} <= set(before)
    assert {before[n].type for n in COUNTERS} == {"counter"} and {before[n].type for n in HISTOGRAMS} == {"histogram"}
    bodies = {c.a.enqueue(bytes([i]) * 100, 3): bytes([i]) * 100 for i in range(5)}
    assert http("PUT", f"{c.a.url}/enqueue?iterations=0", data=b"x").status == 400
    worker = c.worker(threads=1, idle_exit_s=60, worker_id="metrics-worker")
    wait_for(lambda: c.a.status()["completed"] == 5, 60, "the jobs to complete")
    assert sorted(i["work_id"] for i in c.a.pull(10)) == sorted(bodies)
    # A hand-out is counted once confirmed, just after its answer went out.
    after = wait_for(
        lambda: (m := scrape(c.a)) and value(m, "dynwork_results_handed_out", suffix="_total") == 5 and m,
        10,
        "the hand-out to be confirmed",
    )
    assert (
        value(after, "dynwork_jobs_enqueued", suffix="_total") - value(before, "dynwork_jobs_enqueued", suffix="_total")
        == 5
    )
    assert value(after, "dynwork_jobs_completed", suffix="_total") == 5
    assert value(after, "dynwork_jobs_leased", suffix="_total") >= 5
    assert value(after, "dynwork_results_handed_out", suffix="_total") == 5
    assert value(after, "dynwork_requests_refused", {"reason": "bad_request"}, "_total") >= 1
    assert value(after, "dynwork_end_to_end_seconds", suffix="_count") == 5
    assert value(after, "dynwork_enqueue_seconds", suffix="_count") == 5
    assert value(after, "dynwork_store_durable_commit_seconds", suffix="_count") >= 1
    assert value(after, "dynwork_jobs_queued") == 0 and value(after, "dynwork_peer_reachable") == 1
    # Per-worker series only while the worker lives: it is reported, then gone once forgotten.
    assert value(after, "dynwork_worker_rate", {"worker": "metrics-worker"}) > 0
    assert all("work_id" not in s.labels for fam in after.values() for s in fam.samples)  # no per-job labels
    worker.stop()
    wait_for(
        lambda: "metrics-worker" not in json.dumps([s.labels for s in scrape(c.a)["dynwork_worker_rate"].samples]),
        30,
        "the stopped worker's series to go",
    )


def test_metrics_can_require_the_operator_credential_or_be_off(make_cluster):
    c = make_cluster(launcher="none", metrics_auth=True)
    assert http("GET", c.a.url + "/metrics").status == 401
    assert "dynwork_jobs_queued" in scrape(c.a, {"Authorization": f"Bearer {derive(c.token, Role.OPERATOR)}"})
    assert http("GET", c.a.url + "/metrics", headers=worker_headers(c.token, "w")).status == 401
    off = make_cluster(launcher="none", metrics=False)
    assert http("GET", off.a.url + "/metrics").status == 404


def test_a_jobs_history_shows_every_lease_its_end_and_the_hand_out(make_cluster):
    c = make_cluster(launcher="none", lease_s=0.5)
    work_id = c.a.enqueue(b"storied", 2)
    lost = http("POST", f"{c.a.url}/internal/lease?max=1&wait=5", headers=worker_headers(c.token, "ghost"))
    assert lost.status == 200 and work_id.encode() in lost.body
    wait_for(lambda: c.a.work(work_id).json()["status"] == "queued", 15, "the ghost's lease to expire")
    with Completer([c.a], c.token):
        wait_for(lambda: c.a.work(work_id).json()["status"] == "completed", 30, "the job to complete")
    assert [i["work_id"] for i in c.b.pull(10)] == [work_id]  # handed out through the peer
    for server in (c.a, c.b):  # the peer answers with the owner's history
        item = wait_for(
            lambda s=server: (
                (h := s.work(work_id).json() and http("GET", f"{s.url}/work/{work_id}?history=1").json())["history"][
                    "handed_out_at"
                ]
                and h
            ),
            15,
            "the hand-out",
        )
        history = item["history"]
        assert item["result"] == reference(b"storied", 2)
        assert [(lease["worker"], lease["outcome"]) for lease in history["leases"]] == [
            ("ghost", "lease expired"),
            ("test-completer", "completed"),
        ]
        first, second = history["leases"]
        assert history["enqueued_at"] <= first["started_at"] <= first["ended_at"] <= second["started_at"]
        assert second["ended_at"] <= history["finished_at"] <= history["handed_out_at"]
    cli = subprocess.run(
        [sys.executable, "-m", "client.cli", "--server", c.b.url, "get", "--history", work_id],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    for event in ("enqueued", "leased", "lease ended", "lease expired", "finished", "handed out"):
        assert event in cli.stdout


def test_json_log_lines_follow_a_job_and_no_log_line_holds_a_secret(make_cluster):
    c = make_cluster(launcher="local", max_workers=1, worker_idle_s=2, log_format="json", scale_up_wait_s=0.1)
    jobs = [server.enqueue(b"logged %d" % i, 2) for i in range(3) for server in (c.a, c.b)]
    wait_for(lambda: c.a.status()["completed"] + c.b.status()["completed"] == len(jobs), 90, "the jobs")
    c.a.pull(10)
    http("GET", c.a.url + "/internal/status", headers={"Authorization": "Bearer not-it"})  # a refused caller
    lines = [json.loads(line) for line in c.a.log_path.read_text().splitlines() if line.startswith("{")]
    events = [line for line in lines if line["logger"] == "dynwork.events"]
    mine = jobs[0]
    assert {"ts", "level", "logger", "msg"} <= set(lines[0])
    kinds = [e["msg"].split()[0] for e in events if e.get("work_id") == mine]
    assert kinds[0] == "enqueued" and "leased" in kinds and "completed" in kinds
    assert any(e.get("worker", "-") != "-" for e in events if e.get("work_id") == mine)
    # No secret anywhere in any log of the run: the cluster secret, the role credentials, any worker's.
    secrets = {c.token, derive(c.token, Role.PEER), derive(c.token, Role.OPERATOR)}
    logs = list(Path(c.base).rglob("*.log"))
    launched = [log.stem for log in logs if log.parent.name == "workers"]  # a launched worker's log: <id>.log
    secrets |= {worker_credential(c.token, worker) for worker in launched}
    assert launched and len(logs) >= 3  # both servers' logs and the workers' they launched
    for log in logs:
        text = log.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"{log.name} holds a secret"


def test_hashing_on_arrival_is_counted_by_where_and_in_batches(make_cluster):
    """The tiniest job is hashed on the event loop, dearer ones in the hashing thread's batches;
    the counters say so (the dashboard divides them: jobs per batch)."""
    c = make_cluster(launcher="none", hash_on_arrival=512)
    before = scrape(c.a)
    assert value(before, "dynwork_arrival_hashed", {"where": "loop"}, "_total") == 0
    assert value(before, "dynwork_arrival_batches", suffix="_total") == 0
    for body, iterations in ((b"tiny", 1), (bytes(100_000), 1), (bytes(120_000), 3)):
        resp = http("PUT", f"{c.a.url}/enqueue?iterations={iterations}", data=body)
        assert resp.status == 200 and resp.json()["result"] == reference(body, iterations)
    after = scrape(c.a)
    assert value(after, "dynwork_arrival_hashed", {"where": "loop"}, "_total") == 1
    assert value(after, "dynwork_arrival_hashed", {"where": "thread"}, "_total") == 2
    assert value(after, "dynwork_arrival_batches", suffix="_total") == 2  # one at a time: a batch each
