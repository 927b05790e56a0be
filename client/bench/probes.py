"""What the benchmark reads off the machine: the disk's fsync'd write speed, process memory and
start times from /proc, a sampler of the worker processes a local fleet runs, and stopping the
helper processes it starts."""

from __future__ import annotations

import dataclasses
import itertools
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WORKER_MARK = b"\0-m\0worker\0"  # in the cmdline of every `python -m worker`


def cores() -> int:
    """CPUs this process may run on: what a worker with `--threads 0` uses."""
    return len(os.sched_getaffinity(0))


def fsync_write_mb_s(directory: Path, total_bytes: int, block_bytes: int = 1 << 20) -> float:
    """MB/s (10^6) of writing `total_bytes` sequentially to a new file in `directory` with one fsync
    at the end (like `dd bs=1M conv=fsync`), the fsync included; the file is removed."""
    block = os.urandom(block_bytes)
    path = directory / f"dynwork-bench-disk-{os.getpid()}.tmp"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        start = time.perf_counter()
        written = 0
        while written < total_bytes:
            written += os.write(fd, block[: min(block_bytes, total_bytes - written)])
        os.fsync(fd)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return written / elapsed / 1e6


def contention() -> dict[str, float | None]:
    """How busy the machine is: 1-minute load average and CPU pressure (PSI 'some' avg60, percent
    of time some runnable task waited for a CPU); a shared machine shows here."""
    load = os.getloadavg()[0]
    some: float | None = None
    try:
        for line in Path("/proc/pressure/cpu").read_text().splitlines():
            if line.startswith("some "):
                some = float(dict(f.split("=") for f in line.split()[1:])["avg60"])
    except (OSError, KeyError, ValueError):
        pass
    return {"loadavg_1m": round(load, 2), "cpu_pressure_some_avg60": some}


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process in KiB; empty if it is gone."""
    found: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return found


def _stat_fields(path: Path) -> list[str]:
    """The fields of a /proc stat file after the command name (field 3 onwards)."""
    text = path.read_text()
    return text[text.rindex(")") + 2 :].split()


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used; 0.0 if it is gone."""
    try:
        fields = _stat_fields(Path(f"/proc/{pid}/stat"))
    except (OSError, ValueError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_by_role(roles: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds used so far by each role's processes (this process: os.times())."""
    own = os.getpid()
    out = {}
    for role, pids in roles.items():
        out[role] = sum((sum(os.times()[:2]) if pid == own else cpu_s(pid)) for pid in pids)
    return out


def start_boot_s(pid: int) -> float:
    """When the process started, in seconds of CLOCK_BOOTTIME (10 ms resolution)."""
    return int(_stat_fields(Path(f"/proc/{pid}/stat"))[19]) / CLOCK_TICKS


def boot_to_perf(boot_s: float) -> float:
    """A CLOCK_BOOTTIME instant as time.perf_counter() would have read it."""
    return boot_s + (time.perf_counter() - time.clock_gettime(time.CLOCK_BOOTTIME))


def _threads_flag(argv: list[bytes]) -> int:
    """The worker's compute threads from its command line (--threads N; 0 or absent: one per core)."""
    for flag, value in itertools.pairwise(argv):
        if flag == b"--threads" and value.isdigit():
            return int(value) or cores()
    return cores()


@dataclasses.dataclass
class FleetPeaks:
    """The most seen at once: worker processes, hashing threads they were started with, and their
    threads that used >= 5% of a core over one sampling interval (hashing threads at work)."""

    processes: int = 0
    configured_threads: int = 0
    running_threads: int = 0
    first_start_boot_s: float | None = None  # the earliest worker's start, CLOCK_BOOTTIME seconds
    pids: set[int] = dataclasses.field(default_factory=set)
    thread_ticks: dict[tuple[int, int], int] = dataclasses.field(default_factory=dict)  # last CPU ticks seen

    @property
    def cpu_s(self) -> float:
        """CPU seconds the workers used (up to one interval short for threads that ended)."""
        return sum(self.thread_ticks.values()) / CLOCK_TICKS


class FleetSampler:
    """Polls /proc every `interval_s` for `python -m worker` processes whose command line holds
    `marker` (the cluster's temporary directory) and keeps their peaks; a context manager."""

    def __init__(self, marker: str, interval_s: float = 0.25) -> None:
        self.marker = marker.encode()
        self.interval_s = interval_s
        self.peaks = FleetPeaks()
        self._ticks: dict[tuple[int, int], int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-sampler", daemon=True)

    def __enter__(self) -> FleetSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        processes = configured = running = 0
        ticks: dict[tuple[int, int], int] = {}
        busy = max(1, round(0.05 * self.interval_s * CLOCK_TICKS))
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
                if WORKER_MARK not in cmdline or self.marker not in cmdline:
                    continue
                pid = int(entry.name)
                if pid not in self.peaks.pids:
                    self.peaks.pids.add(pid)
                    started = start_boot_s(pid)
                    first = self.peaks.first_start_boot_s
                    self.peaks.first_start_boot_s = started if first is None else min(first, started)
                for task in (entry / "task").iterdir():
                    fields = _stat_fields(task / "stat")
                    used = int(fields[11]) + int(fields[12])  # utime + stime
                    key = (pid, int(task.name))
                    ticks[key] = used
                    if used - self._ticks.get(key, used) >= busy:
                        running += 1
            except (OSError, ValueError, IndexError):
                continue  # exited while being read
            processes += 1
            configured += _threads_flag(cmdline.split(b"\0"))
        self._ticks = ticks
        peaks = self.peaks
        peaks.thread_ticks.update(ticks)
        peaks.processes = max(peaks.processes, processes)
        peaks.configured_threads = max(peaks.configured_threads, configured)
        peaks.running_threads = max(peaks.running_threads, running)


def stop_all(procs: list[subprocess.Popen[bytes]], sig: signal.Signals, timeout_s: float) -> None:
    """Signal every process, then wait for each up to timeout_s and kill what still runs."""
    for proc in procs:
        proc.send_signal(sig)
    for proc in procs:
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
