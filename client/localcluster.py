"""Real dynwork servers and workers as local subprocesses on free loopback ports (benchmarks, tests).

`LocalCluster` is two peer servers sharing a fresh token, plus whatever workers are started for
them; close() stops them all and kills anything left over (workers orphaned by a killed server are
found by the token file in their command line). Waiting is polling with a deadline, never a sleep.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar

from common.credentials import worker_credential

ROOT = Path(__file__).resolve().parent.parent  # the checkout: `python -m server` runs from here
START_TIMEOUT_S = 60.0

T = TypeVar("T")


class LocalClusterError(Exception):
    """A local server or worker did not start, answer or stop as it should."""


class WaitTimedOut(LocalClusterError):
    """A condition polled by wait_for did not hold before its deadline."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, what: str = "condition", interval: float = 0.05) -> T:
    """Poll until predicate() is truthy and return its value; WaitTimedOut after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimedOut(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def get_json(url: str, timeout_s: float = 2.0) -> Any:
    """The JSON of a 200 answer to GET `url`; None when there is no such answer (yet)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except (OSError, http.client.HTTPException, ValueError):
        return None


def make_token_file(directory: Path) -> Path:
    """A fresh cluster token in `directory`/cluster.token, mode 600 as the server demands."""
    path = directory / "cluster.token"
    path.write_text(secrets.token_urlsafe(32) + "\n")
    path.chmod(0o600)
    return path


def kill_processes_using(token_file: Path) -> None:
    """kill -9 leftovers (workers orphaned by a killed server) by the token file in their argv."""
    marker = str(token_file).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
        except OSError:
            pass


def _flags(settings: dict[str, object]) -> list[str]:
    """--some-name VALUE for each some_name=VALUE; a boolean is --some-name or --no-some-name."""
    flags: list[str] = []
    for key, value in settings.items():
        name = key.replace("_", "-")
        flags += [f"--{name}" if value else f"--no-{name}"] if isinstance(value, bool) else [f"--{name}", str(value)]
    return flags


def _workers_reporting(url: str, at_least: int) -> bool:
    """Whether the server's /status counts at least this many workers reporting to it."""
    status = get_json(url + "/status")
    count = status.get("workers_reporting") if isinstance(status, dict) else None
    return isinstance(count, int) and count >= at_least


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class ServerProcess:
    """One `python -m server` subprocess; restartable on the same port and state dir. `settings`
    become flags (max_workers=1 -> --max-workers 1; log_level defaults to DEBUG); its log is
    <state_dir>.log."""

    def __init__(self, port: int, state_dir: Path, token_file: Path, peer: str = "", **settings: object) -> None:
        self.port = port
        self.state_dir = state_dir
        self.token_file = token_file
        self.peer = peer
        self.log_level = str(settings.pop("log_level", "DEBUG"))
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = state_dir.parent / f"{state_dir.name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def name(self) -> str:
        return f"s{self.port}"

    def argv(self) -> list[str]:
        own = {
            "port": self.port,
            "state_dir": self.state_dir,
            "token_file": self.token_file,
            "log_level": self.log_level,
        }
        peer = {"peer": self.peer} if self.peer else {}
        return [sys.executable, "-m", "server", *_flags({**own, **peer, **self.settings})]

    def start(self, wait: bool = True, env: dict[str, str] | None = None) -> Self:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        if wait:
            self.wait_healthy()
        return self

    def healthy(self) -> bool:
        """Whether /healthz answers 200 now."""
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, http.client.HTTPException):  # urllib's HTTPError is an OSError too
            return False

    def wait_healthy(self, timeout: float = START_TIMEOUT_S) -> None:
        """Until /healthz answers; LocalClusterError (with the log's tail) if the process exits first."""

        def up() -> bool:
            assert self.proc is not None, "start() first"
            if self.proc.poll() is not None:
                raise LocalClusterError(f"server on {self.port} exited with {self.proc.returncode}:\n{self.log_tail()}")
            return self.healthy()

        wait_for(up, timeout, f"server on port {self.port}")

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def terminate(self, timeout: float = 90.0) -> bool:
        """SIGTERM and wait up to `timeout` seconds; False if it ignored that and was killed."""
        if self.proc is None or self.proc.poll() is not None:
            return True
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return False
        return True

    def stop(self, timeout: float = 90.0) -> int | None:
        """SIGTERM and wait: the exit status (None if it never ran); LocalClusterError (after
        killing it) if it ignores SIGTERM for `timeout` seconds."""
        if not self.terminate(timeout):
            raise LocalClusterError(f"server on {self.port} ignored SIGTERM:\n{self.log_tail()}")
        return None if self.proc is None else self.proc.returncode

    def kill(self) -> None:
        """kill -9 the server process alone (workers it started live on, as after a real crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def worker_token_file(cluster_token_file: Path, worker_id: str) -> Path:
    """A mode-0600 file next to the cluster's with the worker's own credential (derived)."""
    path = cluster_token_file.parent / f"{worker_id}.token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(worker_credential(cluster_token_file.read_text().strip(), worker_id) + "\n")
    return path


class WorkerProcess:
    """One `python -m worker` subprocess, started at once with its own credential (derived from
    the cluster secret in `token_file`) under `worker_id` (default: made up); `settings` become flags."""

    def __init__(self, servers: list[str], token_file: Path, log_path: Path, **settings: object) -> None:
        self.worker_id = str(settings.pop("worker_id", f"{log_path.stem}-{secrets.token_hex(3)}"))
        credential_file = worker_token_file(token_file, self.worker_id)
        argv = [sys.executable, "-m", "worker", "--worker-id", self.worker_id, "--token-file", str(credential_file)]
        for url in servers:
            argv += ["--server", url]
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(argv + _flags(settings), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class LocalCluster:
    """Two peer servers on free ports under `base` (and the workers started for them), all
    cleaned up by close(). `settings` go to both servers. Subclasses may swap the process classes."""

    server_class: type[ServerProcess] = ServerProcess
    worker_class: type[WorkerProcess] = WorkerProcess

    def __init__(self, base: Path, **settings: object) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        # The pair shares one budget of host cores, as on a real host, but not with other clusters.
        settings.setdefault("local_cores_dir", base / "cores")
        self.token_file = make_token_file(base)
        self.token = self.token_file.read_text().strip()
        ports = [free_port(), free_port()]
        while ports[1] == ports[0]:
            ports[1] = free_port()
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        self.servers = [
            self.server_class(ports[i], base / f"s{ports[i]}", self.token_file, peer=urls[1 - i], **settings)
            for i in range(2)
        ]
        self.workers: list[WorkerProcess] = []

    def start(self) -> Self:
        """Starts both servers side by side and returns once both answer."""
        for server in self.servers:
            server.start(wait=False)
        for server in self.servers:
            server.wait_healthy()
        return self

    @property
    def a(self) -> ServerProcess:
        return self.servers[0]

    @property
    def b(self) -> ServerProcess:
        return self.servers[1]

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(s.url for s in self.servers)

    def wait_for_workers(self, per_server: int = 1, timeout: float = START_TIMEOUT_S) -> None:
        """Until every server counts `per_server` workers reporting to it (e.g. its own launches)."""
        for server in self.servers:
            wait_for(
                functools.partial(_workers_reporting, server.url, per_server),
                timeout,
                f"{per_server} worker(s) reporting to {server.url}",
            )

    def worker(self, own: int = 0, **settings: object) -> WorkerProcess:
        """A worker whose own server is servers[own] (the other is its second)."""
        servers = [self.servers[own].url, self.servers[1 - own].url]
        worker = self.worker_class(servers, self.token_file, self.base / f"worker{len(self.workers)}.log", **settings)
        self.workers.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        for server in self.servers:
            server.terminate(timeout=30)
        for server in self.servers:
            server.kill()
        kill_processes_using(self.token_file)

    def logs(self) -> str:
        parts = [f"--- {s.name} ---\n{s.log_tail()}" for s in self.servers]
        parts += [f"--- worker {i} ---\n{w.log_tail()}" for i, w in enumerate(self.workers)]
        return "\n".join(parts)
