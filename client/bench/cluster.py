"""What every row shares: the options, a row's result, and fresh dynwork clusters to measure.

A dynwork cluster here is client.localcluster's two peer servers on free loopback ports with
state under a new temporary directory; `warm_workers` adds one worker process per server (its
own server first, one hashing thread, never idle-exiting) and waits until both servers count a
worker before it yields. On the way out everything is stopped, any process whose command line
names the temporary directory (workers a server launched) is killed, and the directory removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from client.bench.profile import Profiler
from client.localcluster import LocalCluster, kill_processes_using

KIB = 1024


@dataclasses.dataclass(frozen=True)
class Options:
    """Sizes and switches of one benchmark run (the command line, see client.benchmark)."""

    big_jobs: int = 4500
    mixed_jobs: int = 4500
    small_jobs: int = 30_000
    rounds: int = 3  # comparison rows alternate baseline and dynwork this many times
    concurrency: int = 64
    latency_jobs: int = 500
    disk_mib: int = 1024
    fleet_jobs: int = 200
    fleet_iterations: int = 10_000_000
    fleet_body_bytes: int = 64 * KIB
    kernel_s: float = 4.0
    memory_jobs: int = 100_000
    seed: int = 1
    quick: bool = False
    tmp_dir: Path | None = None  # where state dirs go (default: the system's temp dir)
    profile_dir: Path | None = None  # py-spy raw files of the servers, per dynwork measurement
    log_level: str = "WARNING"
    hash_on_arrival: int | None = None  # the servers' setting (None: their default)

    @property
    def state_parent(self) -> Path:
        return self.tmp_dir or Path(tempfile.gettempdir())


@dataclasses.dataclass
class Headline:
    """One figure of the closing table: its value, the unit or 'x' for a ratio, and the goal."""

    value: float | None
    unit: str = "x"
    goal: str = ""


@dataclasses.dataclass
class RowResult:
    name: str
    title: str
    lines: list[str] = dataclasses.field(default_factory=list)
    figures: dict[str, Any] = dataclasses.field(default_factory=dict)
    headlines: dict[str, Headline] = dataclasses.field(default_factory=dict)
    skipped: str | None = None
    ok: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "ok": self.ok,
            "skipped": self.skipped,
            "figures": self.figures,
            "headlines": {k: dataclasses.asdict(h) for k, h in self.headlines.items()},
        }


def ratio(num: float | None, den: float | None) -> float | None:
    return round(num / den, 3) if num is not None and den else None


@contextlib.contextmanager
def dynwork_cluster(opts: Options, *, warm_workers: bool, **settings: object) -> Iterator[LocalCluster]:
    """Two fresh servers (`settings` go to both), optionally with warm workers; torn down after."""
    if opts.hash_on_arrival is not None:
        settings.setdefault("hash_on_arrival", opts.hash_on_arrival)
    with tempfile.TemporaryDirectory(prefix="dynwork-bench-", dir=opts.state_parent) as tmp:
        cluster = LocalCluster(Path(tmp), log_level=opts.log_level, **settings)
        try:
            cluster.start()
            if warm_workers:
                for own in (0, 1):
                    cluster.worker(own, threads=1, idle_exit_s=0, log_level="WARNING")
                cluster.wait_for_workers(per_server=1)
            yield cluster
        finally:
            cluster.close()
            kill_processes_using(Path(tmp))


def server_pids(cluster: LocalCluster) -> dict[str, int]:
    return {s.name: s.proc.pid for s in cluster.servers if s.proc is not None}


@contextlib.contextmanager
def maybe_profile(opts: Options, cluster: LocalCluster, label: str, enabled: bool = True) -> Iterator[list[Path]]:
    """py-spy on both servers while the block runs, when --profile asked for it; yields the files."""
    if opts.profile_dir is None or not enabled:
        yield []
        return
    with Profiler(server_pids(cluster), opts.profile_dir, label) as profiler:
        yield profiler.outputs
