"""The scaling loop: observe the queue and the fleet, reap the dead, launch what the policy asks.

It never terminates a worker that reports: workers leave on their own when idle. It terminates
only workers that never reported within the boot timeout and workers whose reports stopped, and
requeues whatever those held.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from common.credentials import worker_credential
from common.stats import smoothed
from server.config import ServerSettings
from server.launchers.base import FleetMember, Launcher, LaunchError, MemberState, WorkerSpec
from server.loans import Loans
from server.registry import Registry
from server.scaling import policy
from server.scaling.guard import LaunchGuard
from server.scheduler import Scheduler

log = logging.getLogger(__name__)


@dataclasses.dataclass
class FleetView:
    live: int = 0
    starting: int = 0
    busy: int = 0
    foreign: int = 0  # the cluster's workers another server started: counted, not ours to scale


class Autoscaler:
    def __init__(
        self,
        *,
        settings: ServerSettings,
        scheduler: Scheduler,
        registry: Registry,
        launcher: Launcher,
        guard: LaunchGuard,
        loans: Loans,
        servers: tuple[str, ...],
        secret: str,
        on_reap: Callable[[list[str]], None] = lambda workers: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.scheduler = scheduler
        self.registry = registry
        self.launcher = launcher
        self.guard = guard
        self.loans = loans
        self.servers = servers
        self._secret = secret  # each launched worker gets only its own credential, derived from it
        self.on_reap = on_reap
        self.clock = clock
        self.params = policy.PolicyParams(settings.scale_up_wait_s, settings.target_drain_s)
        self.boot_timeout_s = settings.worker_boot_timeout_s or launcher.default_boot_timeout_s
        self.boot_s: float | None = None  # measured launch -> first report
        self.launching = 0  # launches in flight (counted as starting)
        self.unbooted: dict[str, float] = {}  # launched, not yet reported: id -> launched_at
        self.booted: set[str] = set()  # ids that reported at least once
        self.adopted: set[str] = set()  # found running at start: their boot time is not measured
        self.view = FleetView()
        self.wanted = 0
        self.stopping = False
        self._launch_tasks: set[asyncio.Task[None]] = set()
        self._last_tick = 0.0
        self._seq = 0

    async def tick(self) -> None:
        """One scaling decision (the node runs it every scale_interval_s)."""
        if self.stopping:
            return
        now = self.clock()
        gap = now - self._last_tick if self._last_tick else 0.0
        if gap > max(self.settings.worker_dead_s / 2, 3 * self.settings.scale_interval_s + 1.0):
            # This process was paused (SIGSTOP, a stalled VM): its workers could not have reached it.
            # Count them as just heard from rather than reap a healthy fleet for our own silence.
            log.warning(
                "no scaling decision for %.1fs (paused?): giving every worker a fresh hearing", now - self._last_tick
            )
            self.registry.refresh_all()
        self._last_tick = now
        fleet = await self.launcher.fleet()
        await self._reap_silent()
        await self._track_boots(fleet, now)
        present = {wid: m for wid, m in fleet.items() if m.state is not MemberState.GONE and m.owned}
        foreign = sum(1 for m in fleet.values() if m.state is not MemberState.GONE and not m.owned)
        reporting = {w.worker_id: w for w in self.registry.seen_within(self.settings.worker_dead_s)}
        live = [wid for wid in present if wid in reporting]
        self.view = FleetView(
            live=len(live),
            starting=len([wid for wid in present if wid not in reporting]) + self.launching,
            busy=sum(1 for wid in live if reporting[wid].busy),
            foreign=foreign,
        )
        obs = self.observe(now)
        self.wanted = policy.workers_wanted(obs, self.params)
        count = self.guard.allowed(policy.to_launch(obs, self.params), now)
        if count > 0 and not self.stopping:
            self._start_launch(count, now)

    def observe(self, now: float) -> policy.Observation:
        return policy.Observation(
            queued=len(self.scheduler.queued),
            backlog_cost=self.scheduler.backlog_cost,
            oldest_wait_s=self.scheduler.oldest_wait_s(),
            live=self.view.live,
            starting=self.view.starting,
            allowed=self._allowed(),
            min_workers=self.settings.min_workers,
            worker_rate=self.registry.rate(self.settings.default_worker_rate),
            boot_s=self.boot_s or 0.0,
        )

    def _allowed(self) -> int:
        """The fleet this server may have now: max_workers and loans, and no more than the
        launcher has room for (a local worker needs a free core of the host)."""
        room = self.launcher.capacity()
        if room is None:
            return self.loans.allowed
        return min(self.loans.allowed, self.view.live + self.view.starting + room)

    # -- launching -------------------------------------------------------------------------
    def _spec(self) -> WorkerSpec:
        self._seq += 1
        worker_id = f"{self.settings.server_name}-w{self._seq}-{secrets.token_hex(3)}"
        credential = worker_credential(self._secret, worker_id)
        return WorkerSpec(
            worker_id, self.servers, credential, self.settings.worker_threads, self.settings.worker_idle_s
        )

    def _start_launch(self, count: int, now: float) -> None:
        specs = [self._spec() for _ in range(count)]
        self.launching += count
        self.guard.launched(count, now)
        task = asyncio.create_task(self._launch(specs))
        self._launch_tasks.add(task)
        task.add_done_callback(self._launch_tasks.discard)

    async def _launch(self, specs: list[WorkerSpec]) -> None:
        try:
            started = await self.launcher.launch(specs)
        except LaunchError as exc:
            self.guard.failed(exc, self.clock())
            log.warning("launching %d worker(s) failed: %s", len(specs), exc)
            started = exc.started  # a partial launch still started some
        except Exception as exc:
            log.exception("launcher raised unexpectedly")
            self.guard.failed(LaunchError(str(exc), retryable=True), self.clock())
            started = []
        else:
            self.guard.succeeded(self.clock())
            log.info("launched %d worker(s): %s", len(started), ", ".join(started))
        finally:
            self.launching -= len(specs)
        launched_at = self.clock()
        for worker_id in started:
            self.unbooted[worker_id] = launched_at
            self.adopted.discard(worker_id)  # a reconciliation may have listed it mid-launch

    # -- boots and reaping -----------------------------------------------------------------
    async def _track_boots(self, fleet: dict[str, FleetMember], now: float) -> None:
        for worker_id, member in fleet.items():
            if member.state is MemberState.GONE:
                self.booted.discard(worker_id)
                self.adopted.discard(worker_id)
                continue
            # Adopted at start-up (launched by an earlier run of this server): the boot timeout
            # counts from its launch, but a worker that already runs gets worker_dead_s to report.
            if (
                member.owned
                and worker_id not in self.booted
                and worker_id not in self.unbooted
                and worker_id not in self.registry.workers
            ):
                grace_from = now - self.boot_timeout_s + self.settings.worker_dead_s
                self.unbooted[worker_id] = max(member.launched_at, grace_from)
                self.adopted.add(worker_id)
        for worker_id, launched_at in list(self.unbooted.items()):
            info = self.registry.workers.get(worker_id)
            found = fleet.get(worker_id)
            if info is not None:
                del self.unbooted[worker_id]
                self.booted.add(worker_id)
                self.guard.booted(now)
                if worker_id in self.adopted:
                    self.adopted.discard(worker_id)
                    continue
                took = max(0.0, info.first_seen - launched_at)
                self.boot_s = smoothed(self.boot_s, took, policy.BOOT_SMOOTHING)
            elif found is not None and found.state is MemberState.GONE:
                del self.unbooted[worker_id]
                self.guard.boot_failed(now)
                log.warning("worker %s exited before it ever reported", worker_id)
            elif now - launched_at > self.boot_timeout_s:
                del self.unbooted[worker_id]
                self.guard.boot_failed(now)
                log.warning(
                    "worker %s did not report within %.0fs of launch; terminating it", worker_id, self.boot_timeout_s
                )
                await self.launcher.terminate([worker_id])

    async def _reap_silent(self) -> None:
        """Workers whose reports stopped: requeue what they held here, stop them if ours."""
        for info in self.registry.silent_for(self.settings.worker_dead_s):
            held = self.scheduler.held_by(info.worker_id)
            log.warning(
                "worker %s silent for %.0fs: reaped, its credential revoked, its %d job(s) requeued",
                info.worker_id,
                self.settings.worker_dead_s,
                len(held),
            )
            if held:
                await self.scheduler.expire(worker=info.worker_id)
            self.registry.forget(info.worker_id)
            self.on_reap([info.worker_id])  # its credential stops working on both servers
            await self.launcher.terminate([info.worker_id])

    async def stop(self) -> None:
        """Stop launching (SIGTERM); let launches in flight finish."""
        self.stopping = True
        if self._launch_tasks:
            await asyncio.gather(*self._launch_tasks, return_exceptions=True)

    def fleet_size(self) -> int:
        """Workers of this server that report or are on their way."""
        return self.view.live + self.view.starting

    def status(self) -> dict[str, Any]:
        return {
            "live": self.view.live,
            "starting": self.view.starting,
            "busy": self.view.busy,
            "foreign": self.view.foreign,
            "max": self.settings.max_workers,
            "allowed": self._allowed(),
            "wanted": self.wanted,
            "boot_s": None if self.boot_s is None else round(self.boot_s, 2),
            "worker_rate": self.registry.rate(self.settings.default_worker_rate),
        }
