"""glibc's malloc set for a process that takes 16-256 KB bodies one after another.

Each body passes through a few allocations of its own size (the socket read, the parser's chunk,
the joined body). Left to itself, glibc hands memory above its trim threshold (a few hundred KB
once it has adapted to such blocks) back to the kernel whenever the top of the heap is free, so
the next bodies fault the same pages in again, and the kernel zeroes each one: about 14 page
faults a 256 KB job, 5-9% of a server's CPU in make bench's big row. Keeping up to TRIM_THRESHOLD
of freed heap ends that; bodies under MMAP_THRESHOLD come from the heap, not a fresh mapping each.
RSS stays bounded: at most TRIM_THRESHOLD more than the process's peak of live data needs.

A worker receives its bodies many at a time, in one lease answer of several megabytes (32 bodies
of 256 KB: 8 MB), which a 1 MB threshold would still map afresh, and fault in page by page, for
every lease: about a fifth of a worker's CPU on stored 256 KB jobs (setting a threshold also turns
off glibc's own, which would have risen to such blocks). It keeps blocks up to glibc's
largest threshold (LEASE_MMAP_THRESHOLD) in the heap instead, and up to LEASE_TRIM_THRESHOLD freed.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 1 << 20
TRIM_THRESHOLD = 32 << 20
LEASE_MMAP_THRESHOLD = 32 << 20  # the most glibc takes (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
LEASE_TRIM_THRESHOLD = 64 << 20


def keep_freed_body_memory(largest: int = MMAP_THRESHOLD, kept: int = TRIM_THRESHOLD) -> bool:
    """Blocks up to `largest` come from the heap, and up to `kept` of freed heap stays; True when
    done, False where the C library is not glibc's (or it refused a value)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
    except OSError:
        return False
    # musl also has a mallopt, which ignores everything: only glibc names its version this way.
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, largest)) and bool(mallopt(M_TRIM_THRESHOLD, kept))
