"""Real servers and workers as subprocesses on loopback ports, for the tests, and `Completer`,
which speaks the real internal worker protocol (lease, complete) with hashlib.

The processes are client.localcluster's; this module adds what tests need on top: API shortcuts
on `Server`, urllib-based `http`, and failures reported as AssertionError."""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from client import localcluster
from client.localcluster import START_TIMEOUT_S, free_port, kill_processes_using, make_token_file
from common.credentials import Role, derive, worker_credential
from tests.native_support import reference as native_reference

__all__ = [
    "ROOT",
    "START_TIMEOUT_S",
    "Cluster",
    "Completer",
    "Response",
    "Server",
    "Worker",
    "free_port",
    "http",
    "kill_processes_using",
    "make_token_file",
    "operator_headers",
    "reference",
    "wait_for",
    "worker_headers",
]

ROOT = Path(__file__).resolve().parent.parent

T = TypeVar("T")


def worker_headers(secret: str, worker_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {worker_credential(secret, worker_id)}", "X-Worker-Id": worker_id}


def operator_headers(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {derive(secret, Role.OPERATOR)}"}


def reference(body: bytes, iterations: int) -> str:
    return native_reference(body, iterations).hex()


@contextlib.contextmanager
def _as_assertion() -> Iterator[None]:
    """A local server or worker misbehaving fails the test like an assert."""
    try:
        yield
    except localcluster.LocalClusterError as exc:
        raise AssertionError(str(exc)) from None


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, what: str = "condition", interval: float = 0.05) -> T:
    """Poll until predicate() is truthy; returns its value or fails the test with `what`."""
    with _as_assertion():
        return localcluster.wait_for(predicate, timeout, what, interval)


class Response:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    method: str, url: str, data: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 30.0
) -> Response:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return Response(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as exc:
        return Response(exc.code, exc.headers, exc.read())


class Server(localcluster.ServerProcess):
    """One `python -m server` subprocess; restartable on the same port and state dir. Every job
    goes to the fleet unless the test asks for hash_on_arrival: most tests are of the worker path,
    and their small jobs would otherwise be hashed on arrival (tests/test_on_arrival.py)."""

    def __init__(self, *args: Any, **settings: object) -> None:
        settings.setdefault("hash_on_arrival", 0)
        super().__init__(*args, **settings)

    def wait_healthy(self, timeout: float = START_TIMEOUT_S) -> None:
        with _as_assertion():
            super().wait_healthy(timeout)

    def stop(self, timeout: float = 90.0) -> int | None:
        with _as_assertion():
            return super().stop(timeout)

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

    def detailed_status(self, secret: str) -> dict:
        """GET /internal/status with the operator's credential (derived from the cluster secret)."""
        return http("GET", self.url + "/internal/status", headers=operator_headers(secret)).json()

    def lease(self, secret: str, worker: str, count: int = 10, wait_s: float = 5) -> dict[str, dict]:
        """Lease as `worker` (its credential derived from the cluster secret): work id -> the job's
        header entry (lease_id, iterations, size) with its `body`."""
        from common.wire import unpack_lease

        resp = http(
            "POST", f"{self.url}/internal/lease?max={count}&wait={wait_s:g}", headers=worker_headers(secret, worker)
        )
        assert resp.status == 200, f"lease: {resp.status} {resp.body[:200]!r}"
        header, bodies = unpack_lease(resp.body)
        return {job["work_id"]: {**job, "body": bytes(body)} for job, body in zip(header["jobs"], bodies, strict=True)}

    def internal(self, path: str, payload: dict, secret: str, worker_id: str = "test-worker") -> Response:
        """A worker's call, with that worker's credential (derived from the cluster secret)."""
        return http(
            "POST",
            self.url + path,
            data=json.dumps(payload).encode(),
            headers={**worker_headers(secret, worker_id), "Content-Type": "application/json"},
        )


class Worker(localcluster.WorkerProcess):
    """One `python -m worker` subprocess."""


class Cluster(localcluster.LocalCluster):
    """Two peer servers (and the workers a test starts), all cleaned up by close()."""

    server_class = Server
    worker_class = Worker


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

    def __enter__(self) -> Completer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.errors, self.errors

    def step(self, server, wait_s: float = 0.2, max_jobs: int = 512) -> dict[str, str | None]:
        """One lease-and-complete round on one server: work id -> result reported (None: failed)."""
        jobs = server.lease(self.token, "test-completer", max_jobs, wait_s)
        if not jobs:
            return {}
        leases = {work_id: job["lease_id"] for work_id, job in jobs.items()}
        done = {
            work_id: None if self.fail(work_id) else reference(job["body"], job["iterations"])
            for work_id, job in jobs.items()
        }
        results = [{"work_id": w, "lease_id": leases[w], "result": r} for w, r in done.items() if r is not None]
        failures = [
            {"work_id": w, "lease_id": leases[w], "error": "injected failure"} for w, r in done.items() if r is None
        ]
        answer = server.internal(
            "/internal/complete", {"results": results, "failures": failures}, self.token, "test-completer"
        )
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
