"""Nothing from outside stops a server: floods of clients, odd peers, a full disk, reaped and
orphaned workers. Real server and worker processes; faults produced for real where possible."""

from __future__ import annotations

import concurrent.futures
import http.server as httpserver
import os
import resource
import threading

import pytest

from tests.cluster import Completer, Server, free_port, http, make_token_file, reference, wait_for, worker_headers


def lease_ids(server, secret: str, worker: str, count: int = 10) -> dict[str, str]:
    return {work_id: job["lease_id"] for work_id, job in server.lease(secret, worker, count).items()}


def test_a_reaped_workers_credential_stops_working_on_both_servers(make_cluster):
    c = make_cluster(launcher="local", max_workers=0, worker_dead_s=1)  # reaping, but no launches
    work_id = c.a.enqueue(b"abandoned", 1)
    assert work_id in lease_ids(c.a, c.token, "ghost")
    # Silent for worker_dead_s: reaped by a, its lease requeued at once, its credential revoked.
    wait_for(lambda: c.a.work(work_id).json()["status"] == "queued", 30, "the ghost to be reaped")
    for server in (c.a, c.b):  # b learns of it at the next loan sync
        wait_for(
            lambda s=server: (
                http("POST", f"{s.url}/internal/lease?max=1", headers=worker_headers(c.token, "ghost")).status == 401
            ),
            30,
            f"{server.name} to refuse the reaped worker",
        )
    assert http("POST", f"{c.a.url}/internal/lease?max=1", headers=worker_headers(c.token, "alive")).status == 200


def test_client_long_polls_cannot_cut_a_server_off_from_its_peer(make_cluster):
    c = make_cluster(launcher="none", max_client_waits=40, peer_timeout_s=1)
    mine = c.b.enqueue(b"done meanwhile", 2)  # first in b's queue: the one the completer below takes
    foreign = c.b.enqueue(b"never finishes", 1)  # nobody works on it: a's lookups of it long-poll b
    url = f"{c.a.url}/work/{foreign}?wait=15"
    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        waits = [pool.submit(http, "GET", url, timeout=40) for _ in range(100)]
        # Beyond max_client_waits the answer is a quick 503; the others hold a lookup open on b.
        wait_for(lambda: sum(f.done() for f in waits) >= 100 - 40 - 2, 20, "the excess long-polls to be refused")
        # Meanwhile the peer exchange keeps working: loans sync, pulls reach the peer.
        assert list(Completer([c.b], c.token).step(c.b, wait_s=5, max_jobs=1)) == [mine]
        wait_for(lambda: c.a.status()["peer"]["reachable"], 10, "the peer to stay reachable")
        assert [i["work_id"] for i in c.a.pull(10)] == [mine]
        assert not all(f.done() for f in waits)  # the admitted long-polls were still waiting
        answers = [f.result(timeout=40) for f in waits]
    refused = [a for a in answers if a.status == 503]
    assert len(refused) >= 100 - 40 - 2  # a couple may slip in as others finish
    assert all("Retry-After" in a.headers and "error" in a.json() for a in refused)
    assert all(a.status in (200, 503) for a in answers)


class OddPeer(httpserver.ThreadingHTTPServer):
    """A 'peer' that answers every call 200 with the reply given (an empty body, `[]`, ...)."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        super().__init__(("127.0.0.1", 0), OddHandler)


class OddHandler(httpserver.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.server.reply)))
        self.end_headers()
        self.wfile.write(self.server.reply)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("reply", [b"", b"[]", b"{}", b'{"granted": -1, "name": 3}', b"not json", b'{"handout": 1}'])
def test_an_odd_peer_reply_never_stops_the_server(tmp_path, reply):
    peer = OddPeer(reply)
    threading.Thread(target=peer.serve_forever, daemon=True).start()
    server = Server(
        free_port(),
        tmp_path / "s",
        make_token_file(tmp_path),
        launcher="none",
        peer=f"http://127.0.0.1:{peer.server_address[1]}",
    )
    server.start()
    try:
        own = server.enqueue(b"mine", 1)
        assert http("GET", f"{server.url}/work/s1.1.abcdef?wait=0").status == 503  # the peer's job: unreachable
        pulled = http("POST", f"{server.url}/pullCompleted?top=5")
        assert pulled.status == 200 and pulled.json() == []
        wait_for(lambda: server.status()["peer"]["reachable"] is False, 15, "the peer to count as unreachable")
        assert server.proc.poll() is None and server.work(own).json()["status"] == "queued"
    finally:
        server.stop()
        peer.shutdown()
        peer.server_close()


def test_a_sweep_that_meets_a_full_disk_while_leases_expire_keeps_the_server_up(tmp_path):
    token_file = make_token_file(tmp_path)
    secret = token_file.read_text().strip()
    server = Server(free_port(), tmp_path / "s", token_file, launcher="none", lease_s=5)
    server.start()
    try:
        jobs = {server.enqueue(bytes([i]) * 100, 2): bytes([i]) * 100 for i in range(5)}
        assert set(lease_ids(server, secret, "doomed")) == set(jobs)
        # the lease records are relaxed writes: a job's history lists its lease once its record landed
        # (its status says running sooner, from the scheduler); the sweep must have rows to requeue
        wait_for(
            lambda: all(http("GET", f"{server.url}/work/{w}?history=1").json()["history"]["leases"] for w in jobs),
            30,
            "the leases on disk",
        )
        # Every write now fails (a write at any offset past 1 byte is refused: EFBIG).
        resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))
        health = wait_for(
            lambda: (h := http("GET", f"{server.url}/healthz").json())["ok"] is False and h,
            30,
            "the failing sweep to show in /healthz",
        )
        assert "lease sweep" in health["problems"]
        assert server.proc.poll() is None
        assert http("PUT", f"{server.url}/enqueue?iterations=1", data=b"x").status == 503
        resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        wait_for(lambda: http("GET", f"{server.url}/healthz").json()["ok"], 60, "the sweep to recover")
        wait_for(lambda: server.status()["queued"] == len(jobs), 30, "the expired leases to be requeued")
        leased = lease_ids(server, secret, "second")
        results = [{"work_id": w, "lease_id": lease, "result": reference(jobs[w], 2)} for w, lease in leased.items()]
        assert server.internal("/internal/complete", {"results": results}, secret, "second").json()["accepted"] == 5
    finally:
        server.stop()


def worker_pids(server) -> list[int]:
    marker = f"--worker-id\0{server.name}-w".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def test_a_restarted_server_adopts_its_local_workers_and_stops_them_with_itself(make_cluster):
    c = make_cluster(launcher="local", max_workers=1, worker_threads=1, worker_idle_s=120, scale_up_wait_s=0.1)
    c.a.enqueue(b"wake a worker", 1)
    wait_for(lambda: c.a.status()["completed"] == 1, 60, "a worker to run the job")
    before = worker_pids(c.a)
    assert len(before) == 1
    c.a.kill()  # the worker lives on, as after a real crash
    c.a.start()
    status = wait_for(lambda: (s := c.a.status())["launcher"].get("processes") == 1 and s, 30, "the adoption")
    assert status["workers"]["live"] + status["workers"]["starting"] == 1  # counted, not launched again
    assert worker_pids(c.a) == before
    job = c.a.enqueue(b"after the restart", 3)
    assert wait_for(lambda: (w := c.a.work(job, wait=5).json())["status"] == "completed" and w, 60, "it to work")
    assert worker_pids(c.a) == before
    assert c.a.stop(timeout=120) == 0
    assert worker_pids(c.a) == []  # no orphans


def test_a_completion_batch_refused_as_too_large_is_split_never_dropped(make_cluster):
    # max_body_bytes 1: internal bodies may be 64 KiB, so a batch of ~700 results (~100 KiB) is a 413.
    c = make_cluster(launcher="none", max_body_bytes=1, lease_batch_max=2048)
    jobs = {c.a.enqueue(bytes([i % 256]), 1): bytes([i % 256]) for i in range(700)}
    c.worker(threads=1, idle_exit_s=60, batch_s=5)
    wait_for(lambda: c.a.status()["completed"] == len(jobs), 120, "every job to be reported")
    for work_id, body in list(jobs.items())[::37]:
        assert c.a.work(work_id).json()["result"] == reference(body, 1)
