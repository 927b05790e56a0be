"""`make bench` smoke test: every row of client.benchmark at tiny sizes, and the harness's parts.

No timing is asserted (figures belong to `make bench` and the issues' closing notes): only that
every row runs, reports every figure in --json, and leaves no process or state behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

from client.bench.baseline import BaselinePair
from client.bench.cluster import Headline, Options, RowResult
from client.bench.drive import Bodies
from client.bench.probes import FleetSampler, memory_kib
from client.bench.profile import summarize
from client.bench.rows import keep_logs_of_failure
from client.benchmark import closing_table, describe_hash_on_arrival
from client.localcluster import wait_for
from server.config import ServerSettings

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "--quick",
    "--big-jobs=60",
    "--mixed-jobs=60",
    "--small-jobs=300",
    "--latency-jobs=10",
    "--disk-mib=8",
    "--fleet-jobs=4",
    "--fleet-iterations=50000",
    "--kernel-s=0.3",
    "--memory-jobs=40",
    "--concurrency=8",
    "--rows=big,stored,latency,fleet,memory,native",  # mixed and small run the same code as big, on other bodies
]


def _processes_naming(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_every_row_runs_and_cleans_up(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    out = tmp_path / "bench.json"
    argv = [sys.executable, "-m", "client.benchmark", *TINY, f"--tmp-dir={state}", f"--json={out}"]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    doc = json.loads(out.read_text())
    (run,) = doc["runs"]
    assert list(run) == ["big", "stored", "latency", "fleet", "memory", "native"]
    for name, row in run.items():
        assert row["ok"], (name, row)
    for name in ("big", "stored"):
        figures = run[name]["figures"]
        for side in ("baseline", "dynwork"):
            assert figures[side]["completed"] == figures[side]["jobs"]
            assert figures[side]["cpu_ms_per_job"]["servers"] > 0
        assert figures["end_to_end_ratio"] > 0
        assert figures["disk_fsync_write_mb_per_s"] > 0
    assert run["stored"]["figures"]["dynwork"]["cpu_ms_per_job"]["workers"] > 0  # its jobs went through workers
    assert run["latency"]["headlines"]["p99_ms"]["value"] > 0
    assert run["latency"]["figures"]["durable_baseline"]["p50_ms"] > 0  # the floor it is measured beside
    fleet = run["fleet"]["figures"]
    assert fleet["fleet_it_per_s"] > 0 and fleet["kernel"]["it_per_s"] > 0
    assert fleet["max_worker_processes"] >= 1
    if not run["memory"]["skipped"]:
        assert all(v for v in run["memory"]["figures"]["rss_end"].values())
    assert run["native"]["figures"]["rows"]
    assert set(doc["medians"]) >= {"big.end_to_end", "stored.enqueue_of_disk", "fleet.of_kernel", "latency.p50_ms"}
    assert "headlines" in proc.stdout
    assert list(state.iterdir()) == []  # every state dir removed
    assert _processes_naming(str(state)) == []


def test_the_durable_baseline_commits_each_job_before_answering(tmp_path: Path) -> None:
    with BaselinePair(durable=tmp_path) as pair:
        request = urllib.request.Request(pair.urls[0] + "/enqueue?iterations=3", data=b"payload", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as answer:
            work_id = json.loads(answer.read())["work_id"]
        db = tmp_path / str(pair.ports[0]) / "baseline.sqlite3"
        with contextlib.closing(sqlite3.connect(db)) as conn:  # a second connection sees only what is committed
            assert conn.execute("SELECT work_id, iterations, body FROM jobs").fetchall() == [(work_id, 3, b"payload")]


def test_a_failed_run_keeps_the_tails_of_the_cluster_logs_once() -> None:
    class Cluster:
        calls = 0

        def logs(self) -> str:
            self.calls += 1
            return "--- s1 ---\nERROR the store failed"

    row, cluster = RowResult("big", "title"), Cluster()
    keep_logs_of_failure(row, {"ok": True}, cluster)
    assert "logs_at_failure" not in row.figures and cluster.calls == 0
    keep_logs_of_failure(row, {"ok": False}, cluster)
    keep_logs_of_failure(row, {"ok": False}, cluster)  # the first failure's logs are the ones kept
    assert cluster.calls == 1 and "ERROR the store failed" in row.figures["logs_at_failure"]
    assert any("    ERROR the store failed" in line for line in row.lines)


def test_the_header_names_the_servers_default_hash_on_arrival() -> None:
    (field,) = [f for f in dataclasses.fields(ServerSettings) if f.name == "hash_on_arrival"]
    assert describe_hash_on_arrival(Options()) == f"{field.default} (the servers' default)"
    assert describe_hash_on_arrival(Options(hash_on_arrival=0)) == "0"


def test_closing_table_takes_medians_over_runs() -> None:
    def run(value: float | None) -> dict[str, RowResult]:
        return {"small": RowResult("small", "t", headlines={"end_to_end": Headline(value, "x", ">= 0.4")})}

    lines, medians = closing_table([run(0.2), run(None), run(0.4), run(0.3)])
    assert medians == {"small.end_to_end": 0.3}
    assert lines[1].split()[:6] == ["small.end_to_end", "0.2", "-", "0.4", "0.3", "0.3"]


def test_bodies_are_one_sequence_per_seed() -> None:
    mixed = Bodies(200, 16, 64, seed=7)
    assert mixed.sizes == Bodies(200, 16, 64, seed=7).sizes
    assert all(16 <= len(mixed(i)) <= 64 for i in range(200))
    assert [len(mixed(i)) for i in range(200)] == mixed.sizes
    fixed = Bodies(5, 32)
    assert {len(fixed(i)) for i in range(5)} == {32} and fixed.total_bytes == 160


def test_profile_summary_shares() -> None:
    stacks = [
        (
            [
                "thread (1): MainThread",
                "run (/x/server/app.py:10)",
                "enqueue (/x/server/api.py:20)",
                "0x7f00 (libc.so.6)",
            ],
            3,
        ),
        (
            [
                "thread (1): MainThread",
                "run (/x/server/app.py:10)",
                "select (/x/asyncio/x.py:1)",
                "epoll_wait (libc.so.6)",
            ],
            4,
        ),
        (["thread (2): writer", "commit (/x/server/store.py:5)", "fdatasync (libc.so.6)"], 1),
    ]
    summary = summarize(stacks)
    assert summary["threads"] == [
        ("MainThread", 87.5),
        ("writer", 12.5),
        ("MainThread busy", 37.5),
        ("writer busy", 12.5),
    ]
    assert summary["leaf"] == [("(libc.so.6)", 37.5), ("fdatasync (libc.so.6)", 12.5)]
    assert summary["python"] == [("enqueue (server/api.py)", 37.5), ("commit (server/store.py)", 12.5)]
    assert ("run (server/app.py)", 37.5) in summary["inclusive"]


def test_fleet_sampler_counts_only_marked_workers(tmp_path: Path) -> None:
    marker = str(tmp_path / "mine")
    # A stand-in `python -m worker`: a sleeping interpreter whose argv holds the marker.
    code = "import time; time.sleep(30)"
    argv = [sys.executable, "-c", code, "-m", "worker", "--threads", "3", marker]
    fake = subprocess.Popen(argv)
    try:
        sampler = FleetSampler(marker)

        def seen() -> int:
            sampler.sample()  # the child's argv shows once it has exec'd
            return sampler.peaks.processes

        wait_for(seen, 10, "the stand-in worker")
        assert sampler.peaks.processes == 1 and sampler.peaks.configured_threads == 3
        assert sampler.peaks.first_start_boot_s is not None
        assert memory_kib(os.getpid())["VmRSS"] > 0
        assert FleetSampler(str(tmp_path / "other")).peaks.processes == 0
    finally:
        fake.kill()
        fake.wait()
