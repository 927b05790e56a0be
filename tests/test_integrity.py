"""Leases are capabilities and credentials are per role: nothing forged, nothing from a non-holder.

Real servers; the tests speak the internal protocol themselves, as a worker (or an attacker holding
some worker's credential) would.
"""

from __future__ import annotations

import json

from common.credentials import Role, derive, worker_credential
from tests.cluster import http, reference, wait_for


def lease(server, secret: str, worker: str, count: int = 10, wait_s: float = 5) -> dict[str, dict]:
    return server.lease(secret, worker, count, wait_s)


def report(server, secret: str, worker: str, path: str, payload: dict):
    return server.internal(path, payload, secret, worker)


def result_entry(work_id: str, job: dict, digest: str | None = None) -> dict:
    return {
        "work_id": work_id,
        "lease_id": job["lease_id"],
        "result": digest or reference(job["body"], job["iterations"]),
    }


def test_a_result_for_a_job_the_caller_never_leased_is_refused_and_changes_nothing(cluster):
    work_id = cluster.a.enqueue(b"target", 3)
    leased = lease(cluster.a, cluster.token, "holder")
    job = leased[work_id]
    forged = "00" * 64
    attempts = [
        ("intruder", {"work_id": work_id, "lease_id": job["lease_id"], "result": forged}),  # another worker
        ("holder", {"work_id": work_id, "lease_id": "not-a-lease-id", "result": forged}),  # made-up lease
        ("holder", {"work_id": work_id.rsplit(".", 1)[0] + ".zzzzzz", "lease_id": job["lease_id"], "result": forged}),
        ("holder", {"work_id": f"{cluster.b.name}.1.abcdef", "lease_id": job["lease_id"], "result": forged}),
    ]
    for worker, entry in attempts:
        resp = report(cluster.a, cluster.token, worker, "/internal/complete", {"results": [entry]})
        assert resp.status == 409, (worker, entry, resp.status, resp.body)
        assert resp.json()["rejected"][0]["work_id"] == entry["work_id"]
        assert cluster.a.work(work_id).json()["status"] == "running"
    # A batch mixing a good entry with a forged one is refused whole: nothing is recorded.
    mixed = [result_entry(work_id, job), attempts[1][1]]
    assert report(cluster.a, cluster.token, "holder", "/internal/complete", {"results": mixed}).status == 409
    assert cluster.a.work(work_id).json()["status"] == "running"
    # The holder's real result is then accepted.
    good = report(cluster.a, cluster.token, "holder", "/internal/complete", {"results": [result_entry(work_id, job)]})
    assert good.status == 200 and good.json()["accepted"] == 1
    assert cluster.a.work(work_id).json()["result"] == reference(b"target", 3)


def test_failures_heartbeats_and_releases_from_a_non_holder_are_refused(make_cluster):
    c = make_cluster(launcher="none", max_attempts=1)
    work_id = c.a.enqueue(b"last attempt", 2)
    job = lease(c.a, c.token, "holder")[work_id]
    entry = {"work_id": work_id, "lease_id": job["lease_id"]}
    for path, payload in (
        ("/internal/complete", {"failures": [{**entry, "error": "boom"}]}),
        ("/internal/heartbeat", {"leases": [entry]}),
        ("/internal/release", {"leases": [entry]}),
    ):
        assert report(c.a, c.token, "intruder", path, payload).status == 409, path
    assert c.a.work(work_id).json()["status"] == "running"  # not failed on its last attempt
    beat = report(c.a, c.token, "holder", "/internal/heartbeat", {"leases": [entry]})
    assert beat.status == 200 and beat.json()["lost"] == []


def test_a_late_result_from_an_earlier_holder_is_accepted_while_the_job_is_unfinished(make_cluster):
    c = make_cluster(launcher="none", lease_s=0.5)
    work_id = c.a.enqueue(b"slow worker", 5)
    first = lease(c.a, c.token, "first")[work_id]
    wait_for(lambda: c.a.work(work_id).json()["status"] == "queued", 15, "the lease to expire")
    second = lease(c.a, c.token, "second")[work_id]
    assert second["lease_id"] != first["lease_id"]
    # The first holder's failure no longer counts: its lease is not the current one.
    late_failure = {"work_id": work_id, "lease_id": first["lease_id"], "error": "gave up"}
    assert report(c.a, c.token, "first", "/internal/complete", {"failures": [late_failure]}).status == 200
    assert c.a.work(work_id).json()["status"] == "running"
    # Its result does: the digest is the same whoever computes it.
    late = report(c.a, c.token, "first", "/internal/complete", {"results": [result_entry(work_id, first)]})
    assert late.status == 200 and late.json() == {"accepted": 1, "duplicates": 0}
    current = report(c.a, c.token, "second", "/internal/complete", {"results": [result_entry(work_id, second)]})
    assert current.status == 200 and current.json() == {"accepted": 0, "duplicates": 1}
    assert c.a.work(work_id).json()["result"] == reference(b"slow worker", 5)


def test_each_credential_opens_its_own_endpoints_only(cluster):
    secret = cluster.token
    worker = {"Authorization": f"Bearer {worker_credential(secret, 'w1')}", "X-Worker-Id": "w1"}
    peer = {"Authorization": f"Bearer {derive(secret, Role.PEER)}", "X-Worker-Id": "w1"}
    operator = {"Authorization": f"Bearer {derive(secret, Role.OPERATOR)}"}
    raw_secret = {"Authorization": f"Bearer {secret}", "X-Worker-Id": "w1"}
    wrong_id = {"Authorization": f"Bearer {worker_credential(secret, 'w1')}", "X-Worker-Id": "w2"}
    url = cluster.a.url
    cases = [
        ("POST", "/internal/lease?max=1", worker, 200),
        ("POST", "/internal/lease?max=1", peer, 401),
        ("POST", "/internal/lease?max=1", raw_secret, 401),
        ("POST", "/internal/lease?max=1", wrong_id, 401),
        ("POST", "/internal/peer/pull?top=1", worker, 401),
        ("POST", "/internal/peer/pull?top=1", peer, 200),
        ("POST", "/internal/peer/pull?top=1", raw_secret, 401),
        ("GET", "/internal/status", worker, 401),
        ("GET", "/internal/status", peer, 401),
        ("GET", "/internal/status", operator, 200),
    ]
    for method, path, headers, expected in cases:
        resp = http(method, url + path, data=b"" if method == "POST" else None, headers=headers)
        assert resp.status == expected, (path, headers, resp.status, resp.body[:200])


def test_odd_client_input_is_never_a_500(cluster):
    a, b = cluster.a, cluster.b
    for work_id in (
        f"{a.name}.9999999999999999999.abcdef",
        f"{b.name}.9999999999999999999.abcdef",
        f"{a.name}.1.abcdef%0A",
        f"{b.name}.1.abcdef%0A",
    ):
        assert http("GET", f"{a.url}/work/{work_id}").status == 404, work_id
    assert http("PUT", f"{a.url}/enqueue?iterations=1%0A", data=b"x").status == 400
    assert http("POST", f"{a.url}/pullCompleted?top=1%0A").status == 400
    assert http("GET", f"{a.url}/work/{a.name}.1.abcdef?wait=1%0A").status == 400
    # A non-UTF-8 Authorization header is refused like any wrong credential.
    import socket

    with socket.create_connection(("127.0.0.1", a.port)) as sock:
        sock.sendall(
            b"POST /internal/lease?max=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
            b"X-Worker-Id: w\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 401"), answer[:100]


def test_public_status_hides_what_only_the_operator_may_see(cluster):
    status = wait_for(lambda: (s := cluster.a.status())["peer"]["reachable"] and s, 15, "the peer to answer")
    text = json.dumps(status)
    assert cluster.b.url not in text and "url" not in status["peer"]
    detail = cluster.a.detailed_status(cluster.token)
    assert detail["peer"]["url"] == cluster.b.url and "handouts" in detail
