"""A worker needs nothing of the server package: it runs, leases and reports with `server` (and
`client`) made unimportable in its interpreter, as on a worker image that ships only worker/,
common/ and native/."""

from __future__ import annotations

import subprocess
import sys

from client.localcluster import worker_token_file
from tests.cluster import ROOT, reference, wait_for

BLOCKED = ("server", "client")
RUN_WITHOUT = (
    "import runpy, sys\n"
    f"for name in {BLOCKED!r}:\n"
    "    sys.modules[name] = None  # any import of it now raises ImportError\n"
    "sys.argv = ['worker', *sys.argv[1:]]\n"
    "runpy.run_module('worker', run_name='__main__', alter_sys=True)\n"
)


def test_worker_runs_with_the_server_package_unimportable(cluster):
    argv = [
        sys.executable,
        "-c",
        RUN_WITHOUT,
        "--worker-id",
        "alone",
        "--token-file",
        str(worker_token_file(cluster.token_file, "alone")),
        "--server",
        cluster.a.url,
        "--server",
        cluster.b.url,
        "--threads",
        "1",
        "--idle-exit-s",
        "60",
    ]
    log_path = cluster.base / "alone.log"
    jobs = {}
    for i, server in enumerate((cluster.a, cluster.b, cluster.a)):
        body = bytes([i]) * (1000 + i)
        jobs[server.enqueue(body, 100 + i)] = (server, reference(body, 100 + i))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        for work_id, (server, expected) in jobs.items():
            item = wait_for(
                lambda s=server, w=work_id: (r := s.work(w, wait=5).json())["status"] == "completed" and r,
                60,
                f"{work_id} to complete",
            )
            assert item["result"] == expected
        assert proc.poll() is None, log_path.read_text()
    finally:
        proc.kill()
        proc.wait()
    assert "No module named" not in log_path.read_text() and "ImportError" not in log_path.read_text()


def test_the_blocking_really_blocks():
    code = RUN_WITHOUT.replace(
        "runpy.run_module('worker', run_name='__main__', alter_sys=True)\n", "import server.store\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "No module named 'server.store'" in result.stderr
