"""The public and internal HTTP API against two real servers (no workers: results come from the
internal API the way a worker would send them)."""

from __future__ import annotations

import socket

import pytest

from common.credentials import worker_credential
from tests.cluster import Completer, Server, free_port, http, make_token_file, reference, wait_for


def lease_as(server, secret: str, worker: str, count: int = 1) -> dict[str, str]:
    """Lease up to `count` jobs as the worker; work id -> lease id."""
    return {work_id: job["lease_id"] for work_id, job in server.lease(secret, worker, count).items()}


def complete_via_internal(server, token: str, count: int) -> dict[str, str]:
    """Lease up to `count` jobs as a worker would and report correct results; returns id -> result."""
    return Completer([server], token).step(server, wait_s=5, max_jobs=count)


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?iterations=",
        "?iterations=0",
        "?iterations=-1",
        "?iterations=1.5",
        "?iterations=abc",
        "?iterations=%201",
        "?iterations=1e3",
        "?iterations=0x10",
        "?iterations=100000001",
        "?iterations=99999999999999999999999",
        "?iterations=1&iterations=2",
        "?iterations=%E2%91%A0",
    ],
)
def test_enqueue_rejects_bad_iterations(shared_cluster, query):
    resp = http("PUT", f"{shared_cluster.a.url}/enqueue{query}", data=b"x")
    assert resp.status == 400
    assert "iterations" in resp.json()["error"]


def test_enqueue_accepts_the_bounds_and_an_empty_body(cluster):
    for iterations in (1, 100_000_000):
        work_id = cluster.a.enqueue(b"", iterations)
        assert cluster.a.work(work_id).json()["status"] == "queued"


def test_oversized_body_is_refused_from_content_length_before_reading(make_cluster):
    c = make_cluster(launcher="none", max_body_bytes=1024)
    resp = http("PUT", f"{c.a.url}/enqueue?iterations=1", data=b"x" * 1025)
    assert resp.status == 413 and "limit" in resp.json()["error"]
    assert http("PUT", f"{c.a.url}/enqueue?iterations=1", data=b"x" * 1024).status == 200
    # A client that announces 1 GB gets its answer without sending it.
    with socket.create_connection(("127.0.0.1", c.a.port), timeout=10) as sock:
        sock.sendall(b"PUT /enqueue?iterations=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 413")


def test_chunked_oversized_body_is_refused(make_cluster):
    c = make_cluster(launcher="none", max_body_bytes=1024)

    def chunks():
        for _ in range(4):
            yield b"y" * 512

    import urllib.request

    req = urllib.request.Request(
        f"{c.a.url}/enqueue?iterations=1", data=chunks(), method="PUT", headers={"Transfer-Encoding": "chunked"}
    )
    try:
        urllib.request.urlopen(req, timeout=10)
        status = 200
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (ConnectionError, urllib.error.URLError):
        status = 413  # the server may close before the client finished sending
    assert status == 413
    assert c.a.status()["queued"] == 0


def test_full_queue_answers_503_with_retry_after(make_cluster):
    c = make_cluster(launcher="none", max_queued=2)
    c.a.enqueue(b"1", 1)
    c.a.enqueue(b"2", 1)
    resp = http("PUT", f"{c.a.url}/enqueue?iterations=1", data=b"3")
    assert resp.status == 503
    assert int(resp.headers["Retry-After"]) > 0
    assert "full" in resp.json()["error"]


@pytest.mark.parametrize("query", ["", "?top=0", "?top=1001", "?top=x", "?top=-1", "?top=1.0"])
def test_pull_rejects_bad_top(shared_cluster, query):
    resp = http("POST", f"{shared_cluster.a.url}/pullCompleted{query}")
    assert resp.status == 400 and "top" in resp.json()["error"]


@pytest.mark.parametrize("work_id", ["nope", "s1.1.abcdef", "s0.0.aaaaaa", "%00", "a" * 300])
def test_unknown_work_ids_are_404(shared_cluster, work_id):
    resp = http("GET", f"{shared_cluster.a.url}/work/{work_id}")
    assert resp.status == 404 and "unknown" in resp.json()["error"]


def test_wrong_nonce_is_404_even_for_a_real_seq(cluster):
    work_id = cluster.a.enqueue(b"x", 1)
    name, seq, nonce = work_id.split(".")
    other = "".join("b" if ch != "b" else "c" for ch in nonce)
    assert http("GET", f"{cluster.a.url}/work/{name}.{seq}.{other}").status == 404


@pytest.mark.parametrize(
    "method,path", [("GET", "/enqueue"), ("GET", "/pullCompleted"), ("DELETE", "/work/x"), ("POST", "/healthz")]
)
def test_wrong_method_is_405_json(shared_cluster, method, path):
    resp = http(method, shared_cluster.a.url + path)
    assert resp.status == 405
    assert "error" in resp.json()


def test_unknown_path_is_404_json(shared_cluster):
    resp = http("GET", shared_cluster.a.url + "/nothing/here")
    assert resp.status == 404 and "error" in resp.json()


def test_bad_wait_is_400(cluster):
    work_id = cluster.a.enqueue(b"x", 1)
    for wait in ("-1", "nan", "inf", "abc", "1000"):
        assert http("GET", f"{cluster.a.url}/work/{work_id}?wait={wait}").status == 400


# -- authentication --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,path",
    [
        ("POST", "/internal/lease?max=1"),
        ("POST", "/internal/complete"),
        ("POST", "/internal/heartbeat"),
        ("POST", "/internal/release"),
        ("POST", "/internal/peer/pull?top=5"),
        ("GET", "/internal/peer/work/x.1.abcdef"),
        ("POST", "/internal/peer/sync"),
        ("GET", "/internal/lease"),
        ("DELETE", "/internal/anything"),
        ("GET", "/internal/"),
        ("GET", "/%69nternal/peer/pull"),
        ("GET", "/INTERNAL/lease"),
    ],
)
def test_internal_api_needs_the_token(shared_cluster, method, path):
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-of-enough-length"},
        {"Authorization": shared_cluster.token},
        {"Authorization": f"Basic {shared_cluster.token}"},
    ):
        resp = http(method, shared_cluster.a.url + path, data=b"{}" if method == "POST" else None, headers=headers)
        assert resp.status == 401, (path, headers, resp.status)
        assert resp.json()["error"] == "authentication required"


def test_server_refuses_a_world_readable_token_file(tmp_path):
    token_file = make_token_file(tmp_path)
    token_file.chmod(0o644)
    server = Server(free_port(), tmp_path / "s", token_file, launcher="none")
    server.start(wait=False)
    assert server.proc.wait(30) == 2
    assert "chmod 600" in server.log_tail()


# -- results: pull once, peers, status ------------------------------------------------------


def test_pull_hands_each_result_out_once_and_fills_from_the_peer(cluster):
    ids_a = [cluster.a.enqueue(bytes([i]) * 100, 1 + i) for i in range(3)]
    ids_b = [cluster.b.enqueue(bytes([i]) * 50, 2) for i in range(4)]
    done = complete_via_internal(cluster.a, cluster.token, 10)
    done |= complete_via_internal(cluster.b, cluster.token, 10)
    assert set(done) == set(ids_a + ids_b)
    first = cluster.a.pull(5)
    assert len(first) == 5
    assert sum(1 for item in first if item["work_id"] in ids_a) == 3  # local first, peer fills
    rest = cluster.b.pull(1000)
    again = cluster.a.pull(1000) + cluster.b.pull(1000)
    pulled = first + rest
    assert sorted(item["work_id"] for item in pulled) == sorted(ids_a + ids_b)
    assert again == []
    for item in pulled:
        assert item["result"] == done[item["work_id"]]
        assert set(item) >= {"work_id", "result", "iterations", "completed_at"}
    stamps = [item["completed_at"] for item in first]
    assert stamps == sorted(stamps, reverse=True)


def test_work_status_spans_both_servers_and_outlives_pull(cluster):
    body = bytes(range(256)) * 4
    work_id = cluster.b.enqueue(body, 7)
    assert cluster.a.work(work_id).json()["status"] == "queued"
    complete_via_internal(cluster.b, cluster.token, 1)
    cluster.a.pull(10)
    for server in cluster.servers:
        item = server.work(work_id).json()
        assert item["status"] == "completed"
        assert item["result"] == reference(body, 7)
        assert item["iterations"] == 7 and item["completed_at"] >= item["enqueued_at"]


def test_work_wait_long_polls_until_done(cluster):
    work_id = cluster.a.enqueue(b"wait for me", 3)
    import threading

    got = {}
    thread = threading.Thread(target=lambda: got.update(resp=cluster.b.work(work_id, wait=15)))
    thread.start()
    wait_for(lambda: cluster.a.status()["queued"] == 1, 10, "the job to be queued")
    complete_via_internal(cluster.a, cluster.token, 1)
    thread.join(20)
    assert got["resp"].json()["result"] == reference(b"wait for me", 3)


def test_first_result_wins_and_duplicates_are_accepted(cluster):
    work_id = cluster.a.enqueue(b"dup", 1)
    leased = lease_as(cluster.a, cluster.token, "holder")
    result = {"work_id": work_id, "lease_id": leased[work_id], "result": reference(b"dup", 1)}
    first = cluster.a.internal("/internal/complete", {"results": [result]}, cluster.token, "holder")
    assert first.status == 200 and first.json() == {"accepted": 1, "duplicates": 0}
    again = cluster.a.internal(
        "/internal/complete", {"results": [{**result, "result": "00" * 64}]}, cluster.token, "holder"
    )
    assert again.status == 200 and again.json()["duplicates"] == 1
    assert cluster.a.work(work_id).json()["result"] == reference(b"dup", 1)


def test_malformed_internal_bodies_are_400(cluster):
    for payload in (
        {"results": [["x"]]},
        {"results": [{"work_id": "s1.1.abcdef", "lease_id": "x", "result": "zz"}]},
        {"results": [{"work_id": "a", "result": "00" * 64}]},
        {"leases": "x"},
    ):
        path = "/internal/heartbeat" if "leases" in payload else "/internal/complete"
        assert cluster.a.internal(path, payload, cluster.token).status == 400
    credential = worker_credential(cluster.token, "w")
    resp = http(
        "POST",
        f"{cluster.a.url}/internal/complete",
        data=b"not json",
        headers={"Authorization": f"Bearer {credential}", "X-Worker-Id": "w"},
    )
    assert resp.status == 400
    resp = http("POST", f"{cluster.a.url}/internal/lease?max=1", headers={"Authorization": f"Bearer {credential}"})
    assert resp.status == 400 and "X-Worker-Id" in resp.json()["error"]


def test_status_reports_queue_workers_loans_and_peer(cluster):
    cluster.a.enqueue(b"s", 1)
    status = wait_for(lambda: (s := cluster.a.status())["peer"]["reachable"] and s, 15, "peer reachable")
    assert status["queued"] == 1 and status["oldest_queued_age_s"] >= 0
    for key in ("running", "completed", "workers", "loans", "jobs_per_s"):
        assert key in status
    assert status["peer"]["name"] == cluster.b.name


def test_settings_from_flags_env_and_config_file(tmp_path):
    from server.config import load_settings

    config = tmp_path / "server.toml"
    config.write_text('max_workers = 7\npeer = "http://10.0.0.2:8002"\nlease_s = 12.5\n')
    s = load_settings(["--config", str(config), "--port", "9001"], environ={"DYNWORK_MAX_WORKERS": "9"})
    assert (s.port, s.max_workers, s.peer, s.lease_s) == (9001, 9, "http://10.0.0.2:8002", 12.5)
    assert s.server_name == "s9001"
    with pytest.raises(SystemExit):
        load_settings(["--launcher", "bogus"], environ={})


def test_help_documents_every_setting():
    import dataclasses

    from common.settings import build_parser
    from server.config import ServerSettings
    from worker.config import WorkerSettings

    for cls in (ServerSettings, WorkerSettings):
        text = build_parser(cls, "x", "", "P_").format_help()
        for field in dataclasses.fields(cls):
            assert "--" + field.name.replace("_", "-") in text
            assert "P_" + field.name.upper() in text
