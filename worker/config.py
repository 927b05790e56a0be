"""Worker settings: every option is a flag, a DYNWORK_WORKER_<OPTION> environment variable and a config key."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from common.settings import SettingsError, load, option

ENV_PREFIX = "DYNWORK_WORKER_"


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    server: list[str] = option([], "server URL, repeatable: this worker's own server first, then the peer")
    token_file: Path = option(
        Path(".run/worker.token"),
        "file (mode 0600) holding this worker's credential, good for its --worker-id only"
        " (python -m server.credential_tool worker ID prints one)",
    )
    worker_id: str = option("", "id the server knows this worker by; its credential is bound to it")
    threads: int = option(0, "compute threads (0: one per core)")
    idle_exit_s: float = option(60.0, "exit after this long without work (0: never)")
    lease_wait_s: float = option(15.0, "how long one lease long-poll may wait on the server")
    batch_s: float = option(0.25, "target seconds of work a hashing thread takes on at a time, beyond one job a lane")
    drain_timeout_s: float = option(60.0, "on SIGTERM, longest wait for running jobs before releasing them")
    log_level: str = option("INFO", "logging level")

    def __post_init__(self) -> None:
        if not 1 <= len(self.server) <= 2:
            raise SettingsError("give one or two --server URLs (own server first)")
        if self.threads < 0 or self.idle_exit_s < 0 or self.batch_s <= 0:
            raise SettingsError("threads and idle_exit_s must be >= 0, batch_s > 0")
        if not self.worker_id:
            raise SettingsError("give --worker-id: the worker's credential is good for that id only")

    @property
    def servers(self) -> list[str]:
        return [url.rstrip("/") for url in self.server]

    @property
    def compute_threads(self) -> int:
        if self.threads:
            return self.threads
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    @property
    def identity(self) -> str:
        return self.worker_id


def load_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> WorkerSettings:
    return load(
        WorkerSettings,
        argv,
        prog="python -m worker",
        env_prefix=ENV_PREFIX,
        environ=environ,
        description="A dynwork worker: leases jobs from both servers and hashes them natively.",
    )
