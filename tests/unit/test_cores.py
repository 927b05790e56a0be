"""The host's core budget: a core's lock is held by the worker process it was handed to, and
comes back when that process exits, however it exits."""

from __future__ import annotations

import subprocess
import sys

from server.launchers.cores import CoreBudget


def test_take_locks_free_cores_only_and_closing_gives_them_back(tmp_path):
    budget = CoreBudget(tmp_path / "cores", 3)
    first = budget.take(2)
    assert len(first) == 2 and budget.free() == 1
    second = CoreBudget(tmp_path / "cores", 3)  # another server on the same host
    more = second.take(5)
    assert len(more) == 1 and budget.free() == 0 and second.take(1) == []
    CoreBudget.release(first)
    assert budget.free() == 2
    CoreBudget.release(more)
    assert budget.free() == 3


def test_a_worker_process_holds_its_core_until_it_dies(tmp_path):
    budget = CoreBudget(tmp_path / "cores", 2)
    fds = budget.take(1)
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE, pass_fds=fds
    )
    try:
        CoreBudget.release(fds)  # the launcher's copy: the child's keeps the lock
        assert budget.free() == 1
        child.kill()
        child.wait(10)
        assert budget.free() == 2
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
