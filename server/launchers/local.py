"""Workers as local subprocesses (`python -m worker`), for one machine and for the tests."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from server.launchers.base import FleetMember, Launcher, LaunchError, MemberState, WorkerSpec

log = logging.getLogger(__name__)

TERMINATE_GRACE_S = 5.0  # SIGTERM lets a worker drain; SIGKILL after this


class LocalLauncher(Launcher):
    name = "local"
    default_boot_timeout_s = 30.0

    def __init__(self, token_file: Path, log_dir: Path) -> None:
        self.token_file = token_file
        self.log_dir = log_dir
        self._procs: dict[str, tuple[asyncio.subprocess.Process, float]] = {}
        self._stoppers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)

    async def launch(self, specs: list[WorkerSpec]) -> list[str]:
        started = []
        for spec in specs:
            argv = [
                sys.executable,
                "-m",
                "worker",
                "--token-file",
                str(self.token_file),
                "--worker-id",
                spec.worker_id,
                "--threads",
                str(spec.threads),
                "--idle-exit-s",
                f"{spec.idle_exit_s:g}",
            ]
            for url in spec.servers:
                argv += ["--server", url]
            try:
                with open(self.log_dir / f"{spec.worker_id}.log", "ab") as logfile:  # noqa: ASYNC230 - append-open of a local log, no I/O wait
                    # Own session: a terminal's Ctrl-C reaches the server, which drains its workers.
                    proc = await asyncio.create_subprocess_exec(
                        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=logfile, stderr=logfile, start_new_session=True
                    )
            except OSError as exc:
                raise LaunchError(f"cannot start worker process: {exc}") from exc
            self._procs[spec.worker_id] = (proc, time.time())
            started.append(spec.worker_id)
        return started

    async def terminate(self, worker_ids: list[str]) -> None:
        for worker_id in worker_ids:
            entry = self._procs.get(worker_id)
            if entry is not None and entry[0].returncode is None:
                task = asyncio.create_task(self._stop(entry[0], TERMINATE_GRACE_S))
                self._stoppers.add(task)
                task.add_done_callback(self._stoppers.discard)

    @staticmethod
    async def _stop(proc: asyncio.subprocess.Process, grace_s: float) -> None:
        if proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            log.warning("worker pid %d ignored SIGTERM for %.0fs; killing it", proc.pid, grace_s)
            proc.kill()
            await proc.wait()

    async def fleet(self) -> dict[str, FleetMember]:
        members = {}
        for worker_id, (proc, launched_at) in list(self._procs.items()):
            state = MemberState.RUNNING if proc.returncode is None else MemberState.GONE
            members[worker_id] = FleetMember(worker_id, state, launched_at)
            if state is MemberState.GONE:
                del self._procs[worker_id]  # reported gone once; forget it
        return members

    def status(self) -> dict[str, Any]:
        return {"kind": self.name, "processes": sum(1 for p, _ in self._procs.values() if p.returncode is None)}

    async def close(self) -> None:
        """Stop every worker this server started (they drain on SIGTERM)."""
        procs = [p for p, _ in self._procs.values() if p.returncode is None]
        await asyncio.gather(*(self._stop(p, grace_s=30.0) for p in procs), *self._stoppers, return_exceptions=True)
