"""Workers as local subprocesses (`python -m worker`), for one machine and for the tests.

Each worker gets its own credential in a mode-0600 file next to its log (never the cluster
secret) and a pid file. Workers run in their own session, so a terminal's Ctrl-C reaches only
the server, which then drains them. A restarted server finds the workers its previous process
launched through their pid files and adopts them: they are counted, and stopped with the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from server.launchers.base import FleetMember, Launcher, LaunchError, MemberState, WorkerSpec
from server.launchers.cores import CoreBudget

log = logging.getLogger(__name__)

TERMINATE_GRACE_S = 5.0  # a worker that never reported: SIGTERM, then SIGKILL after this
STOP_MARGIN_S = 10.0  # on stop, beyond the workers' drain timeout


class Process:
    """A worker process: our child, or one adopted from the previous run (polled by pid)."""

    def __init__(self, pid: int, child: asyncio.subprocess.Process | None, launched_at: float) -> None:
        self.pid = pid
        self.child = child
        self.launched_at = launched_at

    @property
    def alive(self) -> bool:
        if self.child is not None:
            return self.child.returncode is None
        return _is_worker(self.pid)

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    async def wait(self, timeout_s: float) -> bool:
        """True once it has exited, False if it is still running after timeout_s."""
        if self.child is not None:
            try:
                await asyncio.wait_for(self.child.wait(), timeout_s)
            except TimeoutError:
                return False
            return True
        deadline = time.monotonic() + timeout_s
        while self.alive:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)
        return True


def _is_worker(pid: int, worker_id: str | None = None) -> bool:
    """The pid is a live `python -m worker` (of that id, when given), not a reused pid."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if state == "Z" or b"worker" not in cmdline:
        return False
    return worker_id is None or f"--worker-id\0{worker_id}\0".encode() in cmdline + b"\0"


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


class LocalLauncher(Launcher):
    name = "local"
    default_boot_timeout_s = 30.0

    def __init__(self, work_dir: Path, *, drain_timeout_s: float = 60.0, cores: CoreBudget | None = None) -> None:
        self.work_dir = work_dir
        self.drain_timeout_s = drain_timeout_s
        self.cores = cores  # the host's cores, shared with other servers on it; None: no limit
        self._procs: dict[str, Process] = {}
        self._stoppers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Adopt the workers an earlier run of this server launched; clean up after dead ones."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        for pid_file in self.work_dir.glob("*.pid"):
            worker_id = pid_file.stem
            try:
                pid = int(pid_file.read_text().strip())
            except (OSError, ValueError):
                pid = 0
            if pid and _is_worker(pid, worker_id):
                self._procs[worker_id] = Process(pid, None, time.monotonic())
                log.info("adopted worker %s (pid %d) from an earlier run", worker_id, pid)
            else:
                self._forget_files(worker_id)

    def _forget_files(self, worker_id: str) -> None:
        for suffix in (".pid", ".token"):
            (self.work_dir / f"{worker_id}{suffix}").unlink(missing_ok=True)

    def capacity(self) -> int | None:
        """Workers of one thread each that the host's free cores still allow (None: no limit)."""
        return None if self.cores is None else self.cores.free()

    async def launch(self, specs: list[WorkerSpec]) -> list[str]:
        """Start one worker per spec, each on as many free cores of the host as it asks threads
        for (0: one); a spec for which no core is free is not started (not an error)."""
        started: list[str] = []
        for spec in specs:
            held = self.cores.take(spec.threads or 1) if self.cores is not None else []
            if self.cores is not None and not held:
                log.info("no free core on this host for worker %s; not launched", spec.worker_id)
                continue
            try:
                await self._start_one(spec, held)
            except OSError as exc:
                self._forget_files(spec.worker_id)
                raise LaunchError(f"cannot start worker process: {exc}", started=started) from exc
            finally:
                CoreBudget.release(held)  # the worker process holds its own copies now
            started.append(spec.worker_id)
        return started

    async def _start_one(self, spec: WorkerSpec, cores: list[int]) -> None:
        threads = len(cores) if cores else spec.threads
        token_file = self.work_dir / f"{spec.worker_id}.token"
        argv = [
            sys.executable,
            "-m",
            "worker",
            "--token-file",
            str(token_file),
            "--worker-id",
            spec.worker_id,
            "--threads",
            str(threads),
            "--idle-exit-s",
            f"{spec.idle_exit_s:g}",
            "--drain-timeout-s",
            f"{spec.drain_timeout_s:g}",
        ]
        for url in spec.servers:
            argv += ["--server", url]
        _write_private(token_file, spec.token + "\n")
        log_path = self.work_dir / f"{spec.worker_id}.log"
        with open(log_path, "ab") as logfile:  # noqa: ASYNC230 - append-open of a local log, no I/O wait
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logfile,
                stderr=logfile,
                start_new_session=True,
                pass_fds=cores,  # the core locks: held by the worker for as long as it lives
            )
        _write_private(self.work_dir / f"{spec.worker_id}.pid", f"{proc.pid}\n")
        self._procs[spec.worker_id] = Process(proc.pid, proc, time.monotonic())

    async def terminate(self, worker_ids: list[str]) -> None:
        for worker_id in worker_ids:
            proc = self._procs.get(worker_id)
            if proc is not None and proc.alive:
                task = asyncio.create_task(self._stop(proc, TERMINATE_GRACE_S))
                self._stoppers.add(task)
                task.add_done_callback(self._stoppers.discard)

    @staticmethod
    async def _stop(proc: Process, grace_s: float) -> None:
        if not proc.alive:
            return
        proc.signal(signal.SIGTERM)
        if not await proc.wait(grace_s):
            log.warning("worker pid %d ignored SIGTERM for %.0fs; killing it", proc.pid, grace_s)
            proc.signal(signal.SIGKILL)
            await proc.wait(5.0)

    async def fleet(self) -> dict[str, FleetMember]:
        members = {}
        for worker_id, proc in list(self._procs.items()):
            state = MemberState.RUNNING if proc.alive else MemberState.GONE
            members[worker_id] = FleetMember(worker_id, state, proc.launched_at)
            if state is MemberState.GONE:
                del self._procs[worker_id]  # reported gone once; forget it
                self._forget_files(worker_id)
        return members

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {"kind": self.name, "processes": sum(1 for p in self._procs.values() if p.alive)}
        if self.cores is not None:
            status["host_cores"] = {"total": self.cores.cores, "free": self.cores.free()}
        return status

    async def close(self) -> None:
        """Stop every worker this server runs and wait while they drain (their drain timeout
        plus a margin), so none is left behind."""
        procs = [p for p in self._procs.values() if p.alive]
        grace_s = self.drain_timeout_s + STOP_MARGIN_S
        await asyncio.gather(*(self._stop(p, grace_s) for p in procs), *self._stoppers, return_exceptions=True)
        for worker_id, proc in list(self._procs.items()):
            if not proc.alive:
                self._forget_files(worker_id)
