"""common.malloc: with it, a process that takes 256 KB bodies one batch after another stops
faulting their pages in afresh each time (each in its own interpreter: mallopt is process-wide)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from common.malloc import keep_freed_body_memory

ROOT = Path(__file__).resolve().parents[2]

BODIES_IN_CYCLES = """
import resource, sys
from common import malloc
if sys.argv[1] == "tuned":
    assert malloc.keep_freed_body_memory()
elif sys.argv[1] == "tuned for leases":
    assert malloc.keep_freed_body_memory(malloc.LEASE_MMAP_THRESHOLD, malloc.LEASE_TRIM_THRESHOLD)

def cycle():  # a burst of bodies alive at once, then all gone; or a worker's lease answer of 32
    bodies = [bytes(256 * 1024) for _ in range(8)] if sys.argv[2] == "bodies" else [b"\x01" * (32 * 256 * 1024)]
    del bodies

for _ in range(10):
    cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    cycle()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str, what: str = "bodies") -> int:
    out = subprocess.run(
        [sys.executable, "-c", BODIES_IN_CYCLES, mode, what],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(out.stdout)


glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")


@glibc_only
def test_bodies_that_come_and_go_stop_faulting_pages_in():
    untuned, tuned = page_faults("untuned"), page_faults("tuned")
    assert untuned > 40 * 8  # glibc by itself gives the heap's top back after each burst
    assert tuned < 40  # kept: fewer than one page fault a burst once warm


@glibc_only
def test_a_worker_stops_faulting_in_its_lease_answers_of_many_bodies():
    as_a_server = page_faults("tuned", "leases")
    assert as_a_server > 40 * 2048  # each 8 MB answer mapped afresh: every page faulted in again
    assert page_faults("tuned for leases", "leases") < 40


@glibc_only
def test_it_says_when_it_was_applied():
    assert keep_freed_body_memory() is True
    assert keep_freed_body_memory() is True  # again at no harm (a server restarted in one process)
