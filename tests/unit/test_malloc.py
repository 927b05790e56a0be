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
if sys.argv[1] == "tuned":
    from common.malloc import keep_freed_body_memory
    assert keep_freed_body_memory()

def cycle():  # a burst of bodies alive at once, then all gone
    bodies = [bytes(256 * 1024) for _ in range(8)]
    del bodies

for _ in range(10):
    cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    cycle()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", BODIES_IN_CYCLES, mode], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    return int(out.stdout)


glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")


@glibc_only
def test_bodies_that_come_and_go_stop_faulting_pages_in():
    untuned, tuned = page_faults("untuned"), page_faults("tuned")
    assert untuned > 40 * 8  # glibc by itself gives the heap's top back after each burst
    assert tuned < 40  # kept: fewer than one page fault a burst once warm


@glibc_only
def test_it_says_when_it_was_applied():
    assert keep_freed_body_memory() is True
    assert keep_freed_body_memory() is True  # again at no harm (a server restarted in one process)
