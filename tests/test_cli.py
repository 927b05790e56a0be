"""The `dynwork` command line: every command against two real servers (in-process through
`main(argv)`, and a few times as a real subprocess)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from client import cli
from tests.cluster import ROOT, Completer, free_port, reference, wait_for


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def dynwork(capsys, cluster_or_urls, *argv: str, stdin: bytes | None = None, monkeypatch=None):
    """(exit code, stdout, stderr) of `dynwork --server A --server B ARGV...` run in-process."""
    urls = cluster_or_urls if isinstance(cluster_or_urls, (list, tuple)) else [s.url for s in cluster_or_urls.servers]
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    flags = [arg for url in urls for arg in ("--server", url)]
    code = cli.main([*flags, *argv], environ={})
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def connected(pid: int, port: int) -> bool:
    """Whether process `pid` holds an established TCP connection to 127.0.0.1:`port` (Linux /proc)."""
    try:
        inodes = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        rows = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    for row in rows:
        fields = row.split()
        if int(fields[2].split(":")[1], 16) == port and fields[3] == "01" and f"socket:[{fields[9]}]" in inodes:
            return True
    return False


def run_subprocess(urls, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    flags = [arg for url in urls for arg in ("--server", url)]
    return subprocess.run(
        [sys.executable, "-m", "client.cli", *flags, *argv],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# Parsing, formatting, the progress bar and the Python client on their own: tests/unit/test_cli_*.py.


# -- enqueue -------------------------------------------------------------------------------------


def test_enqueue_files_and_stdin_over_both_servers(cluster, capsys, monkeypatch, tmp_path):
    bodies = [bytes([0, 255, i]) * 50 for i in range(4)]
    paths = []
    for i, body in enumerate(bodies):
        paths.append(tmp_path / f"f{i}")
        paths[-1].write_bytes(body)
    code, out, err = dynwork(
        capsys,
        cluster,
        "enqueue",
        "--iterations",
        "3",
        *map(str, paths),
        "-",
        stdin=b"\x00from stdin",
        monkeypatch=monkeypatch,
    )
    assert code == 0, err
    ids = out.split()
    assert len(ids) == 5
    assert {work_id.split(".")[0] for work_id in ids} == {cluster.a.name, cluster.b.name}  # round-robin
    for work_id in ids:
        item = cluster.a.work(work_id).json()
        assert (item["status"], item["iterations"]) == ("queued", 3)
    # The bodies arrived intact: complete them and compare with hashlib.
    Completer(cluster.servers, cluster.token).step(cluster.a)
    Completer(cluster.servers, cluster.token).step(cluster.b)
    expected = [reference(b, 3) for b in bodies] + [reference(b"\x00from stdin", 3)]
    assert [cluster.a.work(w).json()["result"] for w in ids] == expected


def test_enqueue_checks_every_file_before_sending_any(cluster, capsys, tmp_path):
    (tmp_path / "ok").write_bytes(b"x")
    code, out, err = dynwork(capsys, cluster, "enqueue", "-n", "1", str(tmp_path / "ok"), str(tmp_path / "missing"))
    assert code == cli.EXIT_USAGE and out == ""
    assert "missing: no such file" in err
    assert cluster.a.status()["queued"] == cluster.b.status()["queued"] == 0


def test_enqueue_shows_the_servers_refusal(cluster, capsys, tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    code, out, err = dynwork(capsys, cluster, "enqueue", "--iterations", "100000001", str(tmp_path / "f"))
    assert code == cli.EXIT_USAGE and out == ""
    assert "HTTP 400" in err and "iterations" in err


def test_enqueue_fails_over_to_a_live_server_and_reports_when_none_is(cluster, capsys, tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    for _ in range(3):  # whichever server the round-robin starts with
        code, out, err = dynwork(capsys, [dead_url(), cluster.a.url], "enqueue", "-n", "1", str(tmp_path / "f"))
        assert code == 0, err
        assert out.startswith(cluster.a.name + ".")
    dead = [dead_url(), dead_url()]
    code, out, err = dynwork(capsys, dead, "enqueue", "-n", "1", str(tmp_path / "f"))
    assert code == cli.EXIT_UNAVAILABLE and out == ""
    assert err.count("connection refused") == 2


# -- get, wait, pull ------------------------------------------------------------------------------


def test_get_answers_from_either_server(cluster, capsys):
    work_id = cluster.a.enqueue(b"abc", 2)
    code, out, _ = dynwork(capsys, [cluster.b.url], "get", work_id)  # b asks its peer
    assert code == 0
    assert json.loads(out)["status"] == "queued"
    code, out, err = dynwork(capsys, cluster, "get", f"{cluster.a.name}.999.zzzzzz")
    assert code == cli.EXIT_NOT_FOUND and out == "" and "unknown work id" in err
    code, _, err = dynwork(capsys, cluster, "get", "../../etc/passwd")
    assert code == cli.EXIT_NOT_FOUND


def test_wait_prints_results_in_order_and_fails_on_a_failed_job(make_cluster, capsys):
    c = make_cluster(launcher="none", max_attempts=1)
    ids = [c.a.enqueue(b"one", 1), c.b.enqueue(b"two", 2), c.a.enqueue(b"three", 1)]
    Completer(c.servers, c.token).step(c.b)
    Completer(c.servers, c.token, fail=lambda work_id: work_id == ids[2]).step(c.a)
    code, out, err = dynwork(capsys, c, "wait", ids[1], ids[0])
    assert code == 0, err
    assert [json.loads(line)["work_id"] for line in out.splitlines()] == [ids[1], ids[0]]
    assert json.loads(out.splitlines()[0])["result"] == reference(b"two", 2)
    code, out, _ = dynwork(capsys, c, "wait", *ids)
    assert code == cli.EXIT_FAILED
    assert [json.loads(line)["status"] for line in out.splitlines()] == ["completed", "completed", "failed"]


def start_waiter(server, work_id: str) -> subprocess.Popen:
    """`dynwork wait` in a subprocess, returned once it holds its long-poll on `server`."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "client.cli", "--server", server.url, "wait", work_id],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: connected(proc.pid, server.port), 30, "the waiter to connect")
    except BaseException:
        proc.kill()
        raise
    return proc


def test_wait_long_polls_until_the_job_is_done(cluster):
    work_id = cluster.a.enqueue(b"later", 5)
    proc = start_waiter(cluster.b, work_id)
    try:
        assert proc.poll() is None  # blocked until a worker turns up
        Completer(cluster.servers, cluster.token).step(cluster.a)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert json.loads(out)["result"] == reference(b"later", 5)
    assert err == ""  # no progress bar without a terminal


def test_wait_gives_up_after_its_timeout(cluster, capsys):
    work_id = cluster.a.enqueue(b"never", 1)
    code, out, err = dynwork(capsys, cluster, "wait", "--timeout", "0.3", work_id, f"{cluster.b.name}.5.aaaaaa")
    assert code == cli.EXIT_NOT_FOUND  # the worst of: one unknown, one still queued
    assert json.loads(out)["status"] == "queued"
    assert "still queued" in err and "unknown work id" in err


def test_pull_hands_results_out_once_as_json_lines_or_a_table(cluster, capsys):
    ids = {cluster.a.enqueue(b"a", 1), cluster.b.enqueue(b"b", 1), cluster.b.enqueue(b"c", 1)}
    completer = Completer(cluster.servers, cluster.token)
    completer.step(cluster.a)
    completer.step(cluster.b)
    code, out, _ = dynwork(capsys, [cluster.a.url], "pull", "--top", "2")
    assert code == 0
    first = [json.loads(line) for line in out.splitlines()]
    assert len(first) == 2
    code, out, _ = dynwork(capsys, cluster, "pull", "--pretty")
    assert code == 0
    rest = out.splitlines()
    assert rest[0].split() == ["WORK", "ID", "ITERATIONS", "COMPLETED", "RESULT"] and len(rest) == 2
    assert {item["work_id"] for item in first} | {rest[1].split()[0]} == ids
    code, out, _ = dynwork(capsys, cluster, "pull", "--pretty")
    assert out.strip() == "(no completed results waiting)"


# -- status --------------------------------------------------------------------------------------


def test_status_of_both_servers_and_of_a_down_one(cluster, capsys):
    cluster.a.enqueue(b"x", 1)
    code, out, _ = dynwork(capsys, cluster, "status")
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:3]}
    assert rows[cluster.a.name][2:4] == ["up", "1"] and rows[cluster.b.name][2:4] == ["up", "0"]
    dead = dead_url()
    code, out, _ = dynwork(capsys, [cluster.a.url, dead], "status", "--json")
    assert code == cli.EXIT_FAILED
    entries = json.loads(out)
    assert entries[0]["up"] and entries[0]["status"]["server"] == cluster.a.name
    assert entries[1] == {"url": dead, "up": False, "error": "connection refused"}
    code, out, _ = dynwork(capsys, [dead], "status")
    assert code == cli.EXIT_UNAVAILABLE and "DOWN" in out


# -- bench ---------------------------------------------------------------------------------------


def test_bench_command_json(cluster):
    urls = [s.url for s in cluster.servers]
    with Completer(cluster.servers, cluster.token):
        proc = run_subprocess(urls, "bench", "--jobs", "200", "--concurrency", "8", "--verify", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["completed"], report["failed"], report["wrong"], report["ok"]) == (200, 0, 0, True)
    assert report["jobs_per_s"] > 0 and report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]


def test_bench_latency_mode_text(cluster, capsys):
    with Completer(cluster.servers, cluster.token):
        code, out, err = dynwork(capsys, cluster, "bench", "--latency", "--jobs", "4", "--warmup", "1")
    assert code == 0, err
    assert "bench --latency: 4 jobs one at a time" in out and "p50" in out and "p99" in out


def test_bench_against_down_servers_exits_3_without_a_traceback():
    proc = run_subprocess([dead_url()], "bench", "--jobs", "5")
    assert proc.returncode == cli.EXIT_UNAVAILABLE
    assert "no server accepts jobs" in proc.stdout and "Traceback" not in proc.stderr


def test_bench_refused_jobs_exit_2(make_cluster, capsys):
    c = make_cluster(launcher="none", max_body_bytes=100)
    code, out, _ = dynwork(capsys, c, "bench", "--jobs", "5", "--body-bytes", "101")
    assert code == cli.EXIT_USAGE and "HTTP 413" in out


def test_wait_rides_out_a_server_restart(cluster):
    work_id = cluster.a.enqueue(b"survives", 1)
    proc = start_waiter(cluster.a, work_id)
    try:
        cluster.a.stop()
        cluster.a.start()
        Completer(cluster.servers, cluster.token).step(cluster.a)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert json.loads(out)["result"] == reference(b"survives", 1)


def test_wait_gives_up_when_no_server_answers(capsys):
    code, out, err = dynwork(capsys, [dead_url()], "wait", "--timeout", "0.5", "s1.1.abcdef")
    assert code == cli.EXIT_UNAVAILABLE and out == ""
    assert "connection refused" in err


def test_a_lost_answer_is_not_repeated_elsewhere_unless_safe(cluster, capsys, tmp_path, silent_url):
    (tmp_path / "f").write_bytes(b"x")
    work_id = cluster.a.enqueue(b"y", 1)
    servers = [silent_url, cluster.a.url]
    # Reading is safe to repeat: the silent server times out and the next one answers.
    code, out, _ = dynwork(capsys, servers, "--http-timeout", "0.5", "get", work_id)
    assert code == 0 and json.loads(out)["work_id"] == work_id
    # Enqueueing is not: the job may be stored on the silent server, so it is not sent again.
    for _ in range(100):  # the round-robin start is random; we need the silent server first
        code, out, err = dynwork(capsys, servers, "--http-timeout", "0.5", "enqueue", "-n", "1", str(tmp_path / "f"))
        if code != 0:
            break
    assert code == cli.EXIT_UNAVAILABLE
    assert "timed out" in err and "may or may not have been applied" in err


def test_bench_through_real_workers(cluster):
    """The whole path: the CLI's bench against two servers and a real worker subprocess on each."""
    cluster.worker(own=0, threads=1)
    cluster.worker(own=1, threads=1)
    proc = run_subprocess(
        [s.url for s in cluster.servers],
        "bench",
        "--jobs",
        "500",
        "--body-bytes",
        "1000",
        "--iterations",
        "3",
        "--verify",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout + cluster.logs()
    report = json.loads(proc.stdout)
    assert (report["completed"], report["failed"], report["wrong"], report["foreign"]) == (500, 0, 0, 0)
