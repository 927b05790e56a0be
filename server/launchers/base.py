"""The seam between the autoscaler and whatever runs workers (local processes, EC2 instances).

The autoscaler decides how many workers it wants; a Launcher only starts and stops them and
says what exists. A worker is known to the server by the id it was launched with: the worker
passes it on every internal call, so the server can match heartbeats to launches.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import Awaitable, Callable, Sequence
from typing import Any


class LaunchError(Exception):
    """Starting workers failed; `retryable` says whether backing off and trying again can help.

    A launch of several workers can fail part way: `started` lists the ids that did start
    before the failure (they run and must be counted), empty when none did."""

    def __init__(self, message: str, *, retryable: bool = True, started: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.started = list(started)


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """What a new worker needs to know; the launcher turns it into argv, env or user-data."""

    worker_id: str
    servers: tuple[str, ...]  # this server's URL first, the peer's second
    token: str  # the worker's own credential (common.credentials), never the cluster secret
    threads: int  # 0: one per core of the machine it runs on
    idle_exit_s: float
    drain_timeout_s: float = 60.0  # on SIGTERM, how long it may finish running jobs


class MemberState(enum.Enum):
    STARTING = "starting"  # launched, not known to be gone
    RUNNING = "running"
    GONE = "gone"  # exited or terminated


@dataclasses.dataclass(frozen=True)
class FleetMember:
    worker_id: str
    state: MemberState
    launched_at: float  # time.monotonic() of the launch, as the launcher knows it
    owned: bool = True  # False: found, not started by this server (counted, never terminated)


class Launcher(abc.ABC):
    """Starts and stops workers. Methods are coroutines and must never block the event loop."""

    name: str = "abstract"
    #: seconds a launched worker may take to report before it is considered failed
    default_boot_timeout_s: float = 30.0

    async def start(self) -> None:  # noqa: B027 - an optional hook, not every launcher needs it
        """Prepare (open clients, adopt what already runs). Called once before anything else."""

    def loops(self) -> dict[str, tuple[Callable[[], Awaitable[None]], float]]:
        """Periodic work the launcher needs: name -> (step, seconds between steps). The node runs
        and supervises each (an error is shown and retried, never fatal)."""
        return {}

    @abc.abstractmethod
    async def launch(self, specs: list[WorkerSpec]) -> list[str]:
        """Start one worker per spec; return the ids started (all of them).

        Raises LaunchError when any failed, with `started` naming those that started anyway."""

    @abc.abstractmethod
    async def terminate(self, worker_ids: list[str]) -> None:
        """Stop these workers now (only workers this launcher owns)."""

    @abc.abstractmethod
    async def fleet(self) -> dict[str, FleetMember]:
        """The workers that exist or recently existed, by id: the truth about the fleet."""

    def capacity(self) -> int | None:
        """How many more one-thread workers there is room for right now beyond what runs (the
        host's free cores, for local workers); None when only max_workers and loans limit it."""
        return None

    def status(self) -> dict[str, Any]:
        """Launcher-specific facts for GET /status (errors, back-off)."""
        return {"kind": self.name}

    async def close(self) -> None:  # noqa: B027 - an optional hook, not every launcher needs it
        """Release resources; running workers keep running unless the launcher owns their lifetime."""
