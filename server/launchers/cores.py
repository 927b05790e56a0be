"""The host's cores as a budget that every server on the host shares, so that local workers never
run more hashing threads than there are cores (two servers of `make up` share one machine).

One lock file per core in a directory both servers use. Launching a worker takes the lock of a
free core (flock, non-blocking) and hands the open file to the worker process, which holds it for
its whole life: when the worker exits, however it exits (kill -9 included), the kernel drops the
lock and the core is free again. Nobody has to remember to give a core back.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path


def default_directory() -> Path:
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    return base / f"dynwork-cores-{os.getuid()}"


def host_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class CoreBudget:
    def __init__(self, directory: Path, cores: int) -> None:
        if cores < 1:
            raise ValueError("a core budget needs at least one core")
        self.directory = directory
        self.cores = cores

    def _open(self, core: int) -> int:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return os.open(self.directory / f"core-{core}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def _try_lock(self, core: int) -> int | None:
        """An open, locked file of a free core, or None when the core is taken."""
        fd = self._open(core)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def take(self, count: int) -> list[int]:
        """Lock up to `count` free cores; the open files holding them (fewer when the host is full).
        Pass them to the worker process and close them here once it has started."""
        taken: list[int] = []
        for core in range(self.cores):
            if len(taken) == count:
                break
            fd = self._try_lock(core)
            if fd is not None:
                taken.append(fd)
        return taken

    def free(self) -> int:
        """How many cores no worker on the host holds right now."""
        free = 0
        for core in range(self.cores):
            fd = self._try_lock(core)
            if fd is not None:
                free += 1
                os.close(fd)  # closing drops the lock
        return free

    @staticmethod
    def release(fds: list[int]) -> None:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
