"""Real servers and workers as subprocesses on loopback ports, for the tests, and `Completer`,
which speaks the real internal worker protocol (lease, complete) with hashlib."""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from tests.native_support import reference as native_reference

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60.0


def reference(body: bytes, iterations: int) -> str:
    return native_reference(body, iterations).hex()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, what: str = "condition", interval: float = 0.05):
    """Poll until predicate() is truthy; returns its value or fails the test with `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class Response:
    def __init__(self, status: int, headers, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)


def http(method: str, url: str, data: bytes | None = None, headers: dict | None = None,
         timeout: float = 30.0) -> Response:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return Response(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as exc:
        return Response(exc.code, exc.headers, exc.read())


def make_token_file(directory: Path) -> Path:
    path = directory / "cluster.token"
    path.write_text(secrets.token_urlsafe(32) + "\n")
    path.chmod(0o600)
    return path


class Server:
    """One `python -m server` subprocess; restartable on the same port and state dir."""

    def __init__(self, port: int, state_dir: Path, token_file: Path, peer: str = "", **settings) -> None:
        self.port = port
        self.state_dir = state_dir
        self.token_file = token_file
        self.peer = peer
        self.settings = settings
        self.proc: subprocess.Popen | None = None
        self.log_path = state_dir.parent / f"{state_dir.name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def name(self) -> str:
        return f"s{self.port}"

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "server", "--port", str(self.port), "--state-dir", str(self.state_dir),
                "--token-file", str(self.token_file), "--log-level", "DEBUG"]
        if self.peer:
            argv += ["--peer", self.peer]
        for key, value in self.settings.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        return argv

    def start(self, wait: bool = True, env: dict | None = None) -> "Server":
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, start_new_session=True)
        log.close()
        if wait:
            self.wait_healthy()
        return self

    def healthy(self) -> bool:
        try:
            return http("GET", self.url + "/healthz", timeout=2).status == 200
        except OSError:
            return False

    def wait_healthy(self) -> None:
        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"server on {self.port} exited with {self.proc.returncode}:\n{self.log_tail()}")
            return self.healthy()
        wait_for(up, START_TIMEOUT_S, f"server on port {self.port}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 90.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"server on {self.port} ignored SIGTERM:\n{self.log_tail()}")

    def kill(self) -> None:
        """kill -9 the server process alone (workers it started live on, as after a real crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    # -- API shortcuts ---------------------------------------------------------------------
    def enqueue(self, body: bytes, iterations: int) -> str:
        resp = http("PUT", f"{self.url}/enqueue?iterations={iterations}", data=body)
        assert resp.status == 200, (resp.status, resp.body)
        return resp.json()["work_id"]

    def work(self, work_id: str, wait: float = 0) -> Response:
        return http("GET", f"{self.url}/work/{work_id}" + (f"?wait={wait:g}" if wait else ""), timeout=wait + 30)

    def pull(self, top: int) -> list[dict]:
        resp = http("POST", f"{self.url}/pullCompleted?top={top}")
        assert resp.status == 200, (resp.status, resp.body)
        return resp.json()

    def status(self) -> dict:
        return http("GET", self.url + "/status").json()

    def internal(self, path: str, payload: dict, token: str, worker_id: str = "test-worker") -> Response:
        return http("POST", self.url + path, data=json.dumps(payload).encode(),
                    headers={"Authorization": f"Bearer {token}", "X-Worker-Id": worker_id,
                             "Content-Type": "application/json"})


class Worker:
    """One `python -m worker` subprocess."""

    def __init__(self, servers: list[str], token_file: Path, log_path: Path, **settings) -> None:
        argv = [sys.executable, "-m", "worker", "--token-file", str(token_file)]
        for url in servers:
            argv += ["--server", url]
        for key, value in settings.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


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


class Cluster:
    """Two peer servers (and the workers a test starts), all cleaned up by close()."""

    def __init__(self, base: Path, **settings) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.token_file = make_token_file(base)
        self.token = self.token_file.read_text().strip()
        ports = [free_port(), free_port()]
        while ports[1] == ports[0]:
            ports[1] = free_port()
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        self.servers = [Server(ports[i], base / f"s{ports[i]}", self.token_file, peer=urls[1 - i], **settings)
                        for i in range(2)]
        self.workers: list[Worker] = []

    def start(self) -> "Cluster":
        for server in self.servers:
            server.start(wait=False)
        for server in self.servers:
            server.wait_healthy()
        return self

    @property
    def a(self) -> Server:
        return self.servers[0]

    @property
    def b(self) -> Server:
        return self.servers[1]

    def worker(self, own: int = 0, **settings) -> Worker:
        servers = [self.servers[own].url, self.servers[1 - own].url]
        worker = Worker(servers, self.token_file, self.base / f"worker{len(self.workers)}.log", **settings)
        self.workers.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        for server in self.servers:
            try:
                server.stop(timeout=30)
            except AssertionError:
                pass
        for server in self.servers:
            server.kill()
        kill_processes_using(self.token_file)

    def logs(self) -> str:
        parts = [f"--- {s.name} ---\n{s.log_tail()}" for s in self.servers]
        parts += [f"--- worker {i} ---\n{w.log_tail()}" for i, w in enumerate(self.workers)]
        return "\n".join(parts)


class Completer:
    """A thread that leases jobs from the servers and completes them with hashlib; ids listed in
    `fail` accepts are reported as failures instead. Use as a context manager."""

    def __init__(self, servers, token: str, fail: Callable[[str], bool] = lambda work_id: False) -> None:
        self.servers = list(servers)
        self.token = token
        self.fail = fail
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Completer":
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.errors, self.errors

    def step(self, server, wait_s: float = 0.2, max_jobs: int = 512) -> dict[str, str | None]:
        """One lease-and-complete round on one server: work id -> result reported (None: failed)."""
        from common.wire import unpack_lease
        headers = {"Authorization": f"Bearer {self.token}", "X-Worker-Id": "test-completer"}
        resp = http("POST", f"{server.url}/internal/lease?max={max_jobs}&wait={wait_s:g}", headers=headers)
        assert resp.status == 200, f"lease: {resp.status} {resp.body[:200]!r}"
        header, bodies = unpack_lease(resp.body)
        if not header["jobs"]:
            return {}
        done = {job["work_id"]: None if self.fail(job["work_id"]) else reference(body, job["iterations"])
                for job, body in zip(header["jobs"], bodies)}
        results = [[w, r] for w, r in done.items() if r is not None]
        failures = [[w, "injected failure"] for w, r in done.items() if r is None]
        answer = server.internal("/internal/complete", {"results": results, "failures": failures}, self.token,
                                 "test-completer")
        assert answer.status == 200, f"complete: {answer.status} {answer.body[:200]!r}"
        return done

    def _run(self) -> None:
        while not self.stop.is_set():
            for server in self.servers:
                try:
                    self.step(server, wait_s=0.05)
                except OSError:
                    pass  # a server stopped by the test
                except AssertionError as exc:
                    self.errors.append(str(exc))
