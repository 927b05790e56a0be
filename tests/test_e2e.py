"""The whole system: real servers, real worker subprocesses, native hashing, crashes."""

from __future__ import annotations

import random
import signal

import pytest

from common.credentials import worker_credential
from tests.cluster import http, reference, wait_for

pytestmark = pytest.mark.slow


def random_body(rng: random.Random, low: int = 16 << 10, high: int = 256 << 10) -> bytes:
    body = bytearray(rng.randbytes(rng.randint(low, high)))
    body[rng.randrange(len(body))] = 0  # NUL bytes and invalid UTF-8 are ordinary content
    body[0:2] = b"\xff\xfe"
    return bytes(body)


def wait_result(server, work_id: str, timeout: float = 60.0) -> dict:
    def finished():
        item = server.work(work_id, wait=5).json()
        return item if item["status"] in ("completed", "failed") else None

    return wait_for(finished, timeout, f"{work_id} to finish")


def pull_all(cluster, expected: int, timeout: float = 60.0) -> list[dict]:
    pulled: list[dict] = []

    def enough():
        pulled.extend(cluster.a.pull(1000))
        return len(pulled) >= expected

    wait_for(enough, timeout, f"{expected} results", interval=0.2)
    return pulled


def test_random_binary_bodies_through_both_servers(cluster):
    rng = random.Random(2026)
    jobs = {}
    for i in range(12):
        server = cluster.servers[i % 2]
        body, iterations = random_body(rng), rng.choice([1, 2, 3, 100, 1000])
        jobs[server.enqueue(body, iterations)] = reference(body, iterations)
    jobs[cluster.a.enqueue(b"", 5)] = reference(b"", 5)
    cluster.worker(own=0, threads=2, idle_exit_s=60)
    pulled = pull_all(cluster, len(jobs))
    assert sorted(item["work_id"] for item in pulled) == sorted(jobs)  # each exactly once
    for item in pulled:
        assert item["result"] == jobs[item["work_id"]], item["work_id"]
    assert cluster.a.pull(1000) == [] and cluster.b.pull(1000) == []
    for work_id, result in jobs.items():
        assert cluster.b.work(work_id).json()["result"] == result


def test_worker_serves_both_servers_and_exits_when_idle(cluster):
    ids = [cluster.b.enqueue(b"peer work %d" % i, 10) for i in range(5)]
    worker = cluster.worker(own=0, threads=1, idle_exit_s=2)
    for work_id in ids:
        assert wait_result(cluster.a, work_id)["status"] == "completed"
    assert worker.proc.wait(30) == 0
    assert "no work for 2s" in worker.log_tail()


def test_kill_9_worker_mid_job_then_the_job_completes_once(make_cluster):
    c = make_cluster(launcher="none", lease_s=2, worker_dead_s=3)
    body = b"long job"
    work_id = c.a.enqueue(body, 8_000_000)  # seconds of hashing
    victim = c.worker(threads=1, idle_exit_s=60)
    wait_for(lambda: c.a.work(work_id).json()["status"] == "running", 30, "the job to be leased")
    victim.kill()
    short = c.a.enqueue(b"short", 3)
    c.worker(threads=1, idle_exit_s=60)
    item = wait_result(c.a, work_id, timeout=180)
    assert item["status"] == "completed" and item["result"] == reference(body, 8_000_000)
    assert item["attempts"] == 2
    pulled = pull_all(c, 2, timeout=60)
    assert sorted(i["work_id"] for i in pulled) == sorted([work_id, short])


def test_kill_9_server_after_acks_then_every_acknowledged_job_completes(cluster):
    rng = random.Random(7)
    jobs = {}
    for _ in range(40):
        body = rng.randbytes(rng.randint(0, 4096))
        jobs[cluster.a.enqueue(body, 3)] = reference(body, 3)
    cluster.a.kill()
    cluster.a.start()
    assert cluster.a.status()["queued"] == 40
    cluster.worker(own=0, threads=2)
    pulled = pull_all(cluster, len(jobs))
    assert {item["work_id"]: item["result"] for item in pulled} == jobs
    # New ids after the restart do not collide with old ones.
    assert cluster.a.enqueue(b"after", 1) not in jobs


def test_peer_down_the_other_server_keeps_working(cluster):
    own = cluster.b.enqueue(b"mine", 2)
    cluster.a.kill()
    assert http("GET", cluster.b.url + "/healthz").status == 200
    cluster.worker(own=1, threads=1)
    assert wait_result(cluster.b, own)["result"] == reference(b"mine", 2)
    assert [i["work_id"] for i in cluster.b.pull(10)] == [own]  # the dead peer is skipped
    second = cluster.b.enqueue(b"more", 2)
    assert wait_result(cluster.b, second)["status"] == "completed"
    status = wait_for(lambda: (s := cluster.b.status())["peer"]["reachable"] is False and s, 30, "peer marked down")
    assert status["queued"] == 0
    resp = http("GET", f"{cluster.b.url}/work/{cluster.a.name}.1.abcdef")
    assert resp.status == 503 and "unreachable" in resp.json()["error"]


def test_sigterm_drains_the_worker(make_cluster):
    c = make_cluster(launcher="none", lease_s=60)
    long_id = c.a.enqueue(b"long", 3_000_000)
    queued = [c.a.enqueue(b"q%d" % i, 3_000_000) for i in range(6)]
    worker = c.worker(threads=1, idle_exit_s=60, lease_wait_s=1)
    wait_for(lambda: c.a.status()["running"] >= 1, 30, "a lease")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(60) == 0
    # What it had started it finished; what it had not it handed back at once (no 60 s lease wait).
    states = [c.a.work(w).json()["status"] for w in [long_id, *queued]]
    assert "running" not in states, states
    assert states.count("completed") >= 1
    assert c.a.status()["queued"] == states.count("queued")
    assert "unexpected error" not in c.a.log_tail(500)  # an abandoned long-poll is routine, not a 500


def test_sigterm_releases_jobs_still_running_after_the_drain_timeout(make_cluster):
    c = make_cluster(launcher="none", lease_s=60)
    work_id = c.a.enqueue(b"too long to wait for", 100_000_000)  # many seconds of hashing
    worker = c.worker(threads=1, idle_exit_s=60, drain_timeout_s=1)
    wait_for(lambda: c.a.work(work_id).json()["status"] == "running", 30, "the lease")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(30) == 0  # it does not wait for the hash to finish
    assert c.a.work(work_id).json()["status"] == "queued"  # handed back, not left to its 60 s lease
    assert "releasing them" in worker.log_tail()


def test_lease_expiry_retries_then_fails_after_max_attempts(make_cluster):
    c = make_cluster(launcher="none", lease_s=0.5, max_attempts=2)
    work_id = c.a.enqueue(b"doomed", 1)
    for attempt in range(2):
        wait_for(lambda: c.a.work(work_id).json()["status"] == "queued", 15, "requeue")
        resp = http(
            "POST",
            f"{c.a.url}/internal/lease?max=1&wait=5",
            headers={
                "Authorization": f"Bearer {worker_credential(c.token, f'ghost{attempt}')}",
                "X-Worker-Id": f"ghost{attempt}",
            },
        )
        assert resp.status == 200 and work_id.encode() in resp.body
    item = wait_for(lambda: (w := c.a.work(work_id).json())["status"] == "failed" and w, 15, "failure")
    assert item["result"] is None and "2 attempts" in item["error"]
    pulled = c.a.pull(10)
    assert pulled[0]["work_id"] == work_id and pulled[0]["result"] is None and pulled[0]["error"]
