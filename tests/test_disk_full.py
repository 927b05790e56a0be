"""A full disk, produced for real with RLIMIT_FSIZE on the server process: enqueue answers 503,
nothing acknowledged is lost, and the server recovers by itself once space is back."""

from __future__ import annotations

import resource

from tests.cluster import Server, free_port, http, make_token_file, wait_for

LIMIT = 3 << 20


def test_full_disk_gives_503_and_recovers(tmp_path):
    token_file = make_token_file(tmp_path)
    server = Server(free_port(), tmp_path / "s", token_file, launcher="none")
    server.start()
    try:
        resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (LIMIT, resource.RLIM_INFINITY))
        acked, refused = [], None
        for i in range(40):
            resp = http("PUT", f"{server.url}/enqueue?iterations=1", data=bytes([i]) * (256 << 10))
            if resp.status == 200:
                acked.append(resp.json()["work_id"])
                continue
            refused = resp
            break
        assert refused is not None, "the size limit never bit"
        assert refused.status == 503 and "storage" in refused.json()["error"]
        assert "Retry-After" in refused.headers
        assert http("GET", server.url + "/healthz").status == 200
        for work_id in acked:
            assert server.work(work_id).json()["status"] == "queued"
        resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        wait_for(
            lambda: http("PUT", f"{server.url}/enqueue?iterations=1", data=b"again").status == 200,
            30,
            "enqueue to work again",
        )
        assert server.status()["queued"] == len(acked) + 1
    finally:
        server.stop()
    # And what was acknowledged is still there after a restart.
    server.start()
    try:
        assert server.status()["queued"] == len(acked) + 1
    finally:
        server.stop()
