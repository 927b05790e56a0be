"""Server settings: every option is a flag, a DYNWORK_<OPTION> environment variable and a config key."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from common.cost import ON_LOOP_MAX_COMPRESSIONS
from common.settings import SettingsError, load, option

ENV_PREFIX = "DYNWORK_"
LAUNCHERS = ("local", "ec2", "none")


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    # where it listens and who it is
    host: str = option("127.0.0.1", "address to listen on")
    port: int = option(8001, "TCP port to listen on")
    name: str = option("", "server name, the prefix of its work ids (default: s<port>); must differ from the peer's")
    public_url: str = option("", "URL workers and the peer use to reach this server (default: http://host:port)")
    peer: str = option("", "URL of the peer server (empty: run alone)")
    state_dir: Path = option(Path(".run/server"), "directory for the SQLite database and worker logs")
    token_file: Path = option(Path(".run/cluster.token"), "file (mode 0600) holding the cluster secret for /internal/")
    log_level: str = option("INFO", "logging level")
    # daemon mode (used by make up and the Ansible local target)
    daemon: bool = option(False, "detach, write --pid-file, and return once /healthz answers")
    pid_file: Path | None = option(None, "pid file for --daemon (default: <state-dir>/server.pid)")
    log_file: Path | None = option(None, "log file for --daemon (default: <state-dir>/server.log)")
    # public API limits
    max_body_bytes: int = option(1 << 20, "largest accepted body, bytes (413 above)")
    max_iterations: int = option(100_000_000, "largest accepted iterations (400 above)")
    hash_on_arrival: int = option(
        ON_LOOP_MAX_COMPRESSIONS,
        "jobs of at most this many iterations are hashed by the server that accepts them, whatever the size"
        " of their body (hashing a body costs less than storing it and handing it to a worker), and stored"
        " finished (0: never)",
    )
    max_queued: int = option(
        100_000, "queued jobs plus uploads in flight at which enqueue answers 503 with Retry-After"
    )
    result_ttl_s: float = option(86_400.0, "seconds a finished job's result stays retrievable")
    # leases
    lease_s: float = option(30.0, "seconds a lease lasts without a heartbeat")
    max_attempts: int = option(5, "leases a job may take before it is failed")
    lease_batch_max: int = option(512, "most jobs handed out by one lease call")
    long_poll_max_s: float = option(20.0, "longest a lease or wait call may be held open")
    sqlite_synchronous: str = option("FULL", "SQLite synchronous mode (FULL survives power loss, NORMAL only crashes)")
    # autoscaling
    launcher: str = option("local", "how workers are started: local (subprocesses), ec2, or none")
    min_workers: int = option(0, "workers kept even when idle")
    max_workers: int = option(5, "most workers this server runs (before loans)")
    scale_up_wait_s: float = option(2.0, "launch when the oldest queued job has waited this long")
    target_drain_s: float = option(30.0, "launch when the backlog would take longer than this to drain")
    scale_interval_s: float = option(0.5, "seconds between scaling decisions")
    worker_threads: int = option(
        0, "compute threads per launched worker (0: one per core of its machine; local workers: one core each)"
    )
    local_cores: int = option(
        0, "local launcher: hashing threads all servers on this host may run together (0: the host's cores)"
    )
    local_cores_dir: Path | None = option(
        None, "local launcher: directory of the host's core locks, shared by its servers (default in /dev/shm)"
    )
    worker_idle_s: float = option(60.0, "a launched worker exits after this long without work")
    worker_dead_s: float = option(15.0, "a worker silent this long is reaped and its leases requeued")
    worker_boot_timeout_s: float = option(
        0.0,
        "a launched worker that has not reported by then is terminated (0: launcher default; local 30, ec2 300)",
        aliases=("--worker-boot-timeout",),
    )
    default_worker_rate: float = option(5e6, "assumed cost units/s of one worker until one is measured")
    max_launches_per_minute: int = option(20, "cap on launches per minute, whatever the policy says")
    peer_timeout_s: float = option(2.0, "timeout of calls to the peer")
    handout_confirm_s: float = option(
        30.0, "results reserved for the peer's pullCompleted return to the pool unless confirmed within this"
    )
    worker_drain_timeout_s: float = option(
        60.0, "on stop, how long launched workers may finish running jobs (the server waits this plus a margin)"
    )
    metrics: bool = option(True, "serve Prometheus metrics at GET /metrics (off: no metric is kept)")
    metrics_auth: bool = option(False, "GET /metrics needs the operator credential, like /internal/status")
    log_format: str = option("text", "log lines as text, or json (one object per line, with work_id and worker fields)")
    max_client_waits: int = option(256, "concurrent GET /work?wait long-polls; beyond, 503 with Retry-After")
    # connections and slow clients (server/limits.py)
    header_timeout_s: float = option(
        10.0, "a request's line and headers must arrive within this many seconds of its first byte, else closed"
    )
    body_timeout_s: float = option(
        10.0, "longest wait for more of a request body, and the grace before body_min_bytes_per_s applies (408)"
    )
    body_min_bytes_per_s: float = option(
        8192.0, "after body_timeout_s, a request body must average at least this many bytes/s (408 below; 0: off)"
    )
    keepalive_s: float = option(75.0, "a connection carrying no request (idle, or never sending) is closed after this")
    max_connections: int = option(
        1024, "open connections at most; beyond, a canned 503 with Retry-After and the connection is closed"
    )
    reserved_connections: int = option(
        64, "of max_connections, kept for /internal/ (workers, peer): public requests on these get 503"
    )
    # EC2 launcher
    launch_template: str = option("", "EC2 launch template name for workers (launcher ec2)")
    cluster: str = option("dynwork", "cluster name, the value of the dynwork:cluster tag")
    aws_region: str = option("", "AWS region (default: the standard AWS configuration chain)")
    reconcile_interval_s: float = option(5.0, "seconds between fleet reconciliations with the cloud")

    def __post_init__(self) -> None:
        if self.log_format not in ("text", "json"):
            raise SettingsError("log_format must be text or json")
        self._check_limits()

    def _check_limits(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise SettingsError(f"launcher must be one of {', '.join(LAUNCHERS)}")
        if not 0 < self.port < 65536:
            raise SettingsError("port must be 1..65535")
        for name in ("max_body_bytes", "max_iterations", "max_queued", "max_attempts", "lease_batch_max"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be >= 1")
        if not 0 <= self.min_workers <= self.max_workers:
            raise SettingsError("need 0 <= min_workers <= max_workers")
        if self.lease_s <= 0 or self.long_poll_max_s < 0:
            raise SettingsError("lease_s must be > 0 and long_poll_max_s >= 0")
        if self.sqlite_synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise SettingsError("sqlite_synchronous must be FULL, NORMAL or EXTRA")
        for name in ("header_timeout_s", "body_timeout_s", "keepalive_s"):
            if not 0 < getattr(self, name) < math.inf:  # also refuses nan
                raise SettingsError(f"{name} must be a finite number > 0")
        if not 0 <= self.body_min_bytes_per_s < math.inf:
            raise SettingsError("body_min_bytes_per_s must be a finite number >= 0")
        if not 0 <= self.reserved_connections < self.max_connections:
            raise SettingsError("need 0 <= reserved_connections < max_connections")
        if self.launcher == "ec2" and not self.launch_template:
            raise SettingsError("launcher ec2 needs --launch-template")

    @property
    def server_name(self) -> str:
        return self.name or f"s{self.port}"

    @property
    def url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


def load_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> ServerSettings:
    return load(
        ServerSettings,
        argv,
        prog="python -m server",
        env_prefix=ENV_PREFIX,
        environ=environ,
        description="A dynwork front server: public API, durable queue, peer exchange, autoscaling.",
    )
