"""Autoscaling with the local launcher: launch up to max, borrow the peer's quota, scale to zero."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.cluster import reference, wait_for

pytestmark = pytest.mark.slow

SCALING = dict(
    local_cores=8,  # room for both maxima on any machine: this test is about max_workers and loans
    launcher="local",
    max_workers=2,
    worker_threads=1,
    worker_idle_s=3,
    scale_up_wait_s=0.2,
    target_drain_s=1,
    scale_interval_s=0.2,
)


def fleet(server) -> int:
    workers = server.status()["workers"]
    return workers["live"] + workers["starting"]


def scalar_iterations_per_s() -> float:
    """This machine's speed of the scalar kernel, the one the workers of the test are pinned to."""
    import native

    n = 1_000_000
    start = time.thread_time()
    native.chain(b"probe", n)
    return n / max(time.thread_time() - start, 1e-6)


def test_backlog_launches_up_to_max_borrows_quota_and_scales_to_zero(make_cluster, monkeypatch):
    # Workers are pinned to the scalar kernel (one lane: a worker holds two jobs at a time, so the
    # backlog stays queued) and each job is sized from this machine's measured scalar speed to
    # about 1.5 s of one core: 48 worker-seconds of work whatever the CPU, so the policy wants
    # more than max_workers. One body for all, so one hashlib reference checks every result.
    monkeypatch.setenv("DYNWORK_HASH_BACKEND", "scalar")
    iterations = max(100_000, min(int(1.5 * scalar_iterations_per_s()), 20_000_000))
    c = make_cluster(**SCALING)
    body = b"burst"
    jobs = [c.a.enqueue(body, iterations) for _ in range(32)]
    # A server at its maximum with a backlog borrows the idle peer's quota.
    wait_for(lambda: fleet(c.a) > 2, 60, "server a to grow past its own max_workers by borrowing")
    sizes = []

    def all_done():
        sizes.append(fleet(c.a) + fleet(c.b))
        status = c.a.status()
        assert status["workers"]["allowed"] <= 4
        return status["completed"] == len(jobs)

    wait_for(all_done, 180, "the burst to complete", interval=0.2)
    assert max(sizes) <= 4  # the two maxima together are never exceeded
    assert c.a.status()["loans"]["borrowed"] > 0 or max(sizes) > 2
    expected = reference(body, iterations)
    for work_id in jobs:
        assert c.a.work(work_id).json()["result"] == expected
    # Idle workers exit on their own; loans are returned.
    wait_for(lambda: fleet(c.a) == 0 and fleet(c.b) == 0, 60, "the fleet to scale to zero")
    wait_for(
        lambda: c.a.status()["loans"]["borrowed"] == 0 and c.b.status()["loans"]["lent"] == 0,
        30,
        "loans to be returned",
    )


def test_a_single_waiting_job_gets_a_worker_quickly(make_cluster):
    c = make_cluster(**SCALING)
    work_id = c.b.enqueue(b"lonely", 1)
    item = wait_for(
        lambda: (w := c.b.work(work_id, wait=5).json())["status"] == "completed" and w, 60, "the job to complete"
    )
    assert item["result"] == reference(b"lonely", 1)
    # The boot time (launch to first report) is measured for the policy.
    wait_for(lambda: c.b.status()["workers"]["boot_s"] is not None, 10, "boot time to be measured")


def worker_pids(server) -> list[int]:
    """Processes of workers this server launched (their ids start with the server's name)."""
    marker = f"--worker-id\0{server.name}-w".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_server_sigterm_drains_and_stops_its_workers(make_cluster):
    c = make_cluster(**{**SCALING, "worker_idle_s": 60})
    c.a.enqueue(b"x", 1)
    wait_for(lambda: c.a.status()["completed"] == 1, 60, "a worker to run the job")
    assert worker_pids(c.a)
    assert c.a.stop(timeout=90) == 0
    assert worker_pids(c.a) == []


def test_the_servers_of_one_host_never_run_more_hashing_threads_than_it_has_cores(make_cluster):
    # Both servers have a backlog and room for three workers each, but the host lends them one core.
    c = make_cluster(**{**SCALING, "local_cores": 1, "max_workers": 3})
    iterations = max(20_000, min(int(0.2 * scalar_iterations_per_s()), 5_000_000))  # ~0.2 s of a core
    jobs = [server.enqueue(b"x%d" % i, iterations) for i in range(6) for server in (c.a, c.b)]
    most = 0

    def all_done() -> bool:
        nonlocal most
        most = max(most, len(worker_pids(c.a)) + len(worker_pids(c.b)))
        return c.a.status()["completed"] + c.b.status()["completed"] == len(jobs)

    wait_for(all_done, 180, "both backlogs to be done on the one core", interval=0.1)
    assert most == 1
    assert c.a.status()["launcher"]["host_cores"]["total"] == 1
