"""The bare aiohttp baseline: dynwork's public API with nothing behind it.

`python -m client.bench.baseline PORT` serves, in one process, on 127.0.0.1:PORT:

- PUT /enqueue: reads the body, keeps it in a dict under a fresh work id, answers {"work_id": ...};
- POST /pullCompleted?top=N: pops up to N stored jobs and answers them as dynwork's finished items
  (work_id, result, iterations, completed_at), the result a fixed placeholder (no hashing);
- GET /work/{id}: answers the job as completed at once (the latency row's floor).

No disk, no workers, no peer. The benchmark starts two of them (`BaselinePair`), mirroring
dynwork's two servers, and drives them with the same client, concurrency and alternation.

With `--durable DIR` an enqueue is also inserted into a SQLite file in DIR (WAL,
synchronous=FULL) and committed, in a thread, before it is answered: what one durable SQLite
commit a job costs a server that does nothing else, on this machine. The latency row measures it
beside the bare server (one job at a time, so it has no group commit: no throughput baseline).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

from aiohttp import web

from client.bench import probes
from client.localcluster import ROOT, free_port, get_json, wait_for

PLACEHOLDER_RESULT = "0" * 128


class Jobs:
    """What a baseline server holds: work id -> (iterations, body), and the last sequence number."""

    def __init__(self) -> None:
        self.stored: dict[str, tuple[int, bytes]] = {}
        self.seq = 0


class DurableLog:
    """Each job inserted and committed with an fsync, in one thread, as dynwork's store does."""

    def __init__(self, directory: Path) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="durable-log")
        self._conn = self._pool.submit(self._open, directory / "baseline.sqlite3").result()

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE IF NOT EXISTS jobs (work_id TEXT PRIMARY KEY, iterations INTEGER, body BLOB)")
        return conn

    def _insert(self, work_id: str, iterations: int, body: bytes) -> None:
        self._conn.execute("BEGIN IMMEDIATE")
        self._conn.execute("INSERT INTO jobs VALUES (?, ?, ?)", (work_id, iterations, body))
        self._conn.execute("COMMIT")

    async def insert(self, work_id: str, iterations: int, body: bytes) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self._insert, work_id, iterations, body)


JOBS = web.AppKey("jobs", Jobs)


def make_app(name: str, durable: Path | None = None) -> web.Application:
    """The baseline application; `name` prefixes its work ids as dynwork's server name does, and
    with `durable` each enqueue is committed to a SQLite file there before it is answered."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[JOBS] = Jobs()
    log = DurableLog(durable) if durable is not None else None

    async def enqueue(request: web.Request) -> web.Response:
        body = await request.read()
        jobs = request.app[JOBS]
        jobs.seq += 1
        work_id = f"{name}.{jobs.seq}.aaaaaa"
        iterations = int(request.query.get("iterations", "1"))
        if log is not None:
            await log.insert(work_id, iterations, body)
        jobs.stored[work_id] = (iterations, body)
        return web.json_response({"work_id": work_id})

    async def pull_completed(request: web.Request) -> web.Response:
        top = int(request.query.get("top", "1"))
        jobs = request.app[JOBS].stored
        now = time.time()
        items = []
        for work_id in list(itertools.islice(jobs, top)):
            iterations, _ = jobs.pop(work_id)
            items.append(
                {"work_id": work_id, "result": PLACEHOLDER_RESULT, "iterations": iterations, "completed_at": now}
            )
        return web.json_response(items)

    async def get_work(request: web.Request) -> web.Response:
        work_id = request.match_info["work_id"]
        return web.json_response({"work_id": work_id, "status": "completed", "result": PLACEHOLDER_RESULT})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_put("/enqueue", enqueue)
    app.router.add_post("/pullCompleted", pull_completed)
    app.router.add_get("/work/{work_id}", get_work)
    app.router.add_get("/healthz", healthz)
    return app


class BaselinePair:
    """Two baseline server processes on free loopback ports; a context manager that stops them.
    With `durable`, each commits its enqueues to a SQLite file in that directory (DurableLog)."""

    def __init__(self, durable: Path | None = None) -> None:
        self.durable = durable
        self.ports = [free_port(), free_port()]
        while self.ports[1] == self.ports[0]:
            self.ports[1] = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(f"http://127.0.0.1:{port}" for port in self.ports)

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def __enter__(self) -> Self:
        try:
            for port in self.ports:
                argv = [sys.executable, "-m", "client.bench.baseline", str(port)]
                if self.durable is not None:
                    argv += ["--durable", str(self.durable / str(port))]
                self.procs.append(subprocess.Popen(argv, cwd=ROOT))
            for url in self.urls:
                wait_for(functools.partial(get_json, url + "/healthz"), 30, f"the baseline server {url}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        probes.stop_all(self.procs, signal.SIGTERM, 10)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 3) or not args[0].isdigit() or (len(args) == 3 and args[1] != "--durable"):
        print("usage: python -m client.bench.baseline PORT [--durable DIR]", file=sys.stderr)
        return 2
    port = int(args[0])
    durable = Path(args[2]) if len(args) == 3 else None
    if durable is not None:
        durable.mkdir(parents=True, exist_ok=True)
    web.run_app(make_app(f"b{port}", durable), host="127.0.0.1", port=port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
