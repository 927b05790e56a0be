"""One server's parts wired together, and every background loop supervised.

A background loop that meets an error logs it, names it in /healthz and /status (degraded),
backs off and carries on: nothing that comes from outside (a full disk, a peer answering
nonsense, the cloud refusing calls) stops the server. Only an explicit stop (SIGTERM) does; a
loop that returns or a programming error that keeps a loop from even starting is reported the
same way and retried.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from common.credentials import Role, derive
from server import status
from server.clock import SYSTEM_CLOCK, Clock
from server.config import ServerSettings
from server.dashboard import Dashboard
from server.events import EventLog, Events, Fanout
from server.handouts import Handouts
from server.health import Health
from server.launchers.base import Launcher
from server.limits import ConnectionLimits, Connections
from server.loans import Loans
from server.metrics import Metrics
from server.peer import SYNC_INTERVAL_S, PeerClient
from server.peering import Peering, Revocations
from server.registry import Registry
from server.scaling.autoscaler import Autoscaler
from server.scaling.guard import LaunchGuard
from server.scheduler import Scheduler
from server.service import Service
from server.store import Store
from server.timeline import SAMPLE_INTERVAL_S, Recorder

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 1.0
TTL_SWEEP_INTERVAL_S = 60.0
BODY_COLLECT_INTERVAL_S = 1.0  # often, so a spare waits whenever the current segment fills (server/bodies.py)
BACKOFF_MAX_S = 30.0
FORGET_WORKERS_AFTER = 4  # registry entries of workers silent this many worker_dead_s are dropped


def make_launcher(settings: ServerSettings) -> Launcher | None:
    if settings.launcher == "local":
        from server.launchers.cores import CoreBudget, default_directory, host_cores
        from server.launchers.local import LocalLauncher

        cores = CoreBudget(settings.local_cores_dir or default_directory(), settings.local_cores or host_cores())
        return LocalLauncher(
            settings.state_dir / "workers", drain_timeout_s=settings.worker_drain_timeout_s, cores=cores
        )
    if settings.launcher == "ec2":
        from server.launchers.ec2 import Ec2Launcher  # boto3 is only imported where it is used

        return Ec2Launcher(settings)
    return None


class Node:
    def __init__(self, settings: ServerSettings, secret: str, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings
        self.name = settings.server_name
        self.secret = secret
        self.clock = clock
        self.health = Health(clock)
        self.recorder = Recorder(self.name, clock)  # what the dashboard learns as jobs finish
        self.metrics = Metrics() if settings.metrics else None
        watchers: list[Events] = [self.recorder, *([self.metrics] if self.metrics else []), EventLog(self.name)]
        self.events = Fanout(*watchers)
        self.store = Store(
            settings.state_dir / "dynwork.sqlite3",
            synchronous=settings.sqlite_synchronous,
            on_commit=self.events.committed,
        )
        self.scheduler = Scheduler(
            self.store,
            lease_s=settings.lease_s,
            max_attempts=settings.max_attempts,
            clock=clock,
            events=self.events,
        )
        self.registry = Registry(clock.mono)
        self.peer = (
            PeerClient(settings.peer, derive(secret, Role.PEER), settings.peer_timeout_s) if settings.peer else None
        )
        self.launcher = make_launcher(settings)
        self.loans = Loans(settings.max_workers if self.launcher else 0)
        self.revocations = Revocations(self.store, clock)
        self.guard = LaunchGuard(max_per_minute=settings.max_launches_per_minute, clock=clock.mono, rng=random.random)
        servers = (settings.url,) + ((settings.peer.rstrip("/"),) if settings.peer else ())
        self.autoscaler = (
            Autoscaler(
                settings=settings,
                scheduler=self.scheduler,
                registry=self.registry,
                launcher=self.launcher,
                guard=self.guard,
                loans=self.loans,
                servers=servers,
                secret=secret,
                on_reap=self.revocations.revoke,
                clock=clock.mono,
            )
            if self.launcher
            else None
        )
        self.peering = Peering(
            self.name,
            loans=self.loans,
            revocations=self.revocations,
            store=self.store,
            peer=self.peer,
            fleet=self.autoscaler,
        )
        self.handouts = Handouts(
            self.store, self.name, self.peer, confirm_s=settings.handout_confirm_s, clock=clock, events=self.events
        )
        self.service = Service(
            settings,
            store=self.store,
            scheduler=self.scheduler,
            registry=self.registry,
            handouts=self.handouts,
            peer=self.peer,
            health=self.health,
            peering=self.peering,
            report=self._report,
            events=self.events,
        )
        if self.metrics is not None:
            self.metrics.watch(self)
        self.connections = Connections(
            ConnectionLimits(
                max_connections=settings.max_connections,
                reserved_connections=settings.reserved_connections,
                header_timeout_s=settings.header_timeout_s,
            )
        )
        self.dashboard = Dashboard(self)
        self.stopped = asyncio.Event()  # set when the server must stop (a signal)
        self._tasks: list[asyncio.Task[None]] = []

    async def _report(self, detail: bool) -> dict[str, Any]:
        return status.report(self, detail=detail)

    @property
    def closing(self) -> bool:
        return self.service.closing

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        await self.store.start()
        await self.store.check_identity(self.name)
        await self.scheduler.load()
        await self.revocations.load()
        await self.peering.load()
        if self.peer:
            await self.peer.start()
        if self.launcher:
            await self.launcher.start()
            for name, (step, every_s) in self.launcher.loops().items():
                self._supervise(name, step, every_s=every_s)
        self._supervise("lease sweep", self._sweep, every_s=SWEEP_INTERVAL_S)
        self._supervise("result expiry", self._expire_results, every_s=TTL_SWEEP_INTERVAL_S)
        self._supervise("body segments", self._collect_bodies, every_s=BODY_COLLECT_INTERVAL_S)
        self._supervise("dashboard sampler", self.dashboard.sample, every_s=SAMPLE_INTERVAL_S)
        if self.autoscaler:
            self._supervise("autoscaler", self.autoscaler.tick, every_s=self.settings.scale_interval_s)
        if self.peer:
            self._supervise("peer sync", self.peering.sync_once, every_s=SYNC_INTERVAL_S)
            self._supervise("hand-out confirmations", self.handouts.confirm_loop)

    def _supervise(self, name: str, step: Callable[[], Awaitable[None]], *, every_s: float = 0.0) -> None:
        """Run step() every every_s (or, with 0, as one long-running loop) until the node closes.

        An error is logged, shown as a problem (degraded) and retried after a back-off that
        doubles up to BACKOFF_MAX_S; the problem clears at the first step that succeeds."""

        async def supervise() -> None:
            failures = 0
            while not self.closing:
                try:
                    await step()
                except Exception as exc:
                    failures += 1
                    delay = min(BACKOFF_MAX_S, max(every_s, 0.5) * 2 ** min(failures, 6)) * random.uniform(0.8, 1.2)
                    summary = type(exc).__name__
                    log.warning(
                        "%s failed (%d in a row; retrying in %.1fs): %s: %s",
                        name,
                        failures,
                        delay,
                        summary,
                        exc,
                        exc_info=failures == 1,
                    )
                    self.health.failing(name, summary, str(exc))
                    await asyncio.sleep(delay)
                    continue
                if failures:
                    log.info("%s recovered after %d failure(s)", name, failures)
                    failures = 0
                    self.health.recovered(name)
                if every_s <= 0:  # a long-running loop that returned: start it again
                    await asyncio.sleep(1.0)
                else:
                    await asyncio.sleep(every_s)

        self._tasks.append(asyncio.create_task(supervise(), name=name))

    async def drain(self) -> None:
        """First phase of a stop, while still serving: no launches, local workers drain."""
        self.service.closing = True
        self.scheduler.close()
        if self.autoscaler:
            await self.autoscaler.stop()
        if self.launcher:
            await self.launcher.close()

    async def close(self) -> None:
        self.service.closing = True
        self.scheduler.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.dashboard.close()
        if self.peer:
            await self.peer.close()
        self.scheduler.hasher.close()
        await self.store.close()

    # -- background steps ------------------------------------------------------------------
    async def _sweep(self) -> None:
        await self.scheduler.expire()
        await self.handouts.expire()
        forgotten = self.registry.prune(FORGET_WORKERS_AFTER * self.settings.worker_dead_s)
        if forgotten:
            log.info(
                "forgot %d worker(s) silent for %.0fs",
                len(forgotten),
                FORGET_WORKERS_AFTER * self.settings.worker_dead_s,
            )
        await self.revocations.save()

    async def _collect_bodies(self) -> None:
        retired = await self.store.collect_bodies()
        if retired:
            log.info("retired %d body segment(s) whose jobs have all finished", retired)

    async def _expire_results(self) -> None:
        removed = await self.store.expire_results(self.clock.steady_wall() - self.settings.result_ttl_s)
        if removed:
            log.info("dropped %d results older than %.0fs", removed, self.settings.result_ttl_s)
