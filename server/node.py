"""One server's parts wired together, and every background loop supervised."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Coroutine
from typing import Any

from common.http import HttpError
from server.config import ServerSettings
from server.launchers.base import Launcher
from server.loans import Loans
from server.peer import SYNC_INTERVAL_S, PeerClient
from server.registry import Registry
from server.scaling.autoscaler import Autoscaler
from server.scaling.guard import LaunchGuard
from server.scheduler import Scheduler
from server.service import Service
from server.store import Store

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 1.0
TTL_SWEEP_INTERVAL_S = 60.0
PEER_SILENT_S = 30.0  # quota lent to a peer that stopped syncing comes back after this


def make_launcher(settings: ServerSettings) -> Launcher | None:
    if settings.launcher == "local":
        from server.launchers.local import LocalLauncher

        return LocalLauncher(settings.token_file, settings.state_dir / "workers")
    if settings.launcher == "ec2":
        from server.launchers.ec2 import Ec2Launcher  # boto3 is only imported where it is used

        return Ec2Launcher(settings)
    return None


class Node:
    def __init__(self, settings: ServerSettings, token: str) -> None:
        self.settings = settings
        self.name = settings.server_name
        self.token = token
        self.store = Store(settings.state_dir / "dynwork.sqlite3", synchronous=settings.sqlite_synchronous)
        self.scheduler = Scheduler(self.store, lease_s=settings.lease_s, max_attempts=settings.max_attempts)
        self.registry = Registry()
        self.peer = PeerClient(settings.peer, token, settings.peer_timeout_s) if settings.peer else None
        self.launcher = make_launcher(settings)
        self.loans = Loans(settings.max_workers if self.launcher else 0)
        self.guard = LaunchGuard(
            max_per_minute=settings.max_launches_per_minute, clock=time.monotonic, rng=random.random
        )
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
                token=token,
            )
            if self.launcher
            else None
        )
        self.service = Service(
            settings,
            store=self.store,
            scheduler=self.scheduler,
            registry=self.registry,
            loans=self.loans,
            peer=self.peer,
            fleet=self.autoscaler,
            launcher=self.launcher,
            guard=self.guard if self.launcher else None,
        )
        self.stopped = asyncio.Event()  # set when the server must stop (signal or a dead loop)
        self.fatal: BaseException | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def closing(self) -> bool:
        return self.service.closing

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        await self.store.start()
        await self.store.check_identity(self.name)
        await self.scheduler.load()
        if self.peer:
            await self.peer.start()
        if self.launcher:
            await self.launcher.start()
            for name, loop in self.launcher.loops().items():
                self._supervise(name, loop)
        self._supervise("lease-sweeper", self._sweep_loop())
        if self.autoscaler:
            self._supervise("autoscaler", self.autoscaler.run())
        if self.peer:
            self._supervise("peer-sync", self._peer_loop(self.peer))

    def _supervise(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        """A background loop that dies takes the server down loudly instead of limping on."""
        task = asyncio.create_task(coro, name=name)

        def done(t: asyncio.Task[None]) -> None:
            if t.cancelled():
                return
            exc = t.exception()
            if exc is not None and not self.closing:
                log.critical("background loop %s died; stopping the server", name, exc_info=exc)
                self.fatal = exc
                self.stopped.set()

        task.add_done_callback(done)
        self._tasks.append(task)

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
        if self.peer:
            await self.peer.close()
        await self.store.close()

    # -- background loops ------------------------------------------------------------------
    async def _sweep_loop(self) -> None:
        next_ttl = 0.0
        while True:
            await self.scheduler.expire()
            self.loans.expire_lent(PEER_SILENT_S)
            now = time.time()
            if now >= next_ttl:
                removed = await self.store.expire_results(now - self.settings.result_ttl_s)
                if removed:
                    log.info("dropped %d results older than %.0fs", removed, self.settings.result_ttl_s)
                next_ttl = now + TTL_SWEEP_INTERVAL_S
            await asyncio.sleep(SWEEP_INTERVAL_S)

    async def _peer_loop(self, peer: PeerClient) -> None:
        while True:
            wanted = self.autoscaler.wanted if self.autoscaler else 0
            have = self.autoscaler.fleet_size() if self.autoscaler else 0
            try:
                self.loans.borrowed = await peer.sync({"name": self.name, **self.loans.borrow_request(wanted, have)})
            except HttpError:
                # Keep only what running workers use; ask again when the peer is back.
                in_use = have - (self.loans.max_workers - self.loans.lent)
                self.loans.borrowed = max(0, min(self.loans.borrowed, in_use))
            await asyncio.sleep(SYNC_INTERVAL_S)
