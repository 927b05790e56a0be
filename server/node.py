"""One server's services wired together, with supervised background loops."""
from __future__ import annotations

import asyncio
import logging
import random
import time

from aiohttp import web

from server.autoscaler import Autoscaler
from server.config import ServerSettings
from server.guard import LaunchGuard
from server.launcher import Launcher
from server.loans import Loans
from server.local_launcher import LocalLauncher
from server.peer import PeerClient, PeerUnavailable
from server.scheduler import Scheduler
from server.store import Store
from server.workers import Registry

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 1.0
TTL_SWEEP_INTERVAL_S = 60.0
PEER_SYNC_INTERVAL_S = 1.0
PEER_SILENT_S = 30.0  # quota lent to a peer that stopped syncing comes back after this


def make_launcher(settings: ServerSettings) -> Launcher | None:
    if settings.launcher == "local":
        return LocalLauncher(settings.token_file, settings.state_dir / "workers")
    if settings.launcher == "ec2":
        from server.ec2 import Ec2Launcher  # boto3 is only imported where it is used
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
        self.guard = LaunchGuard(max_per_minute=settings.max_launches_per_minute, clock=time.monotonic,
                                 rng=random.random)
        servers = (settings.url,) + ((settings.peer.rstrip("/"),) if settings.peer else ())
        self.autoscaler = Autoscaler(settings=settings, scheduler=self.scheduler, registry=self.registry,
                                     launcher=self.launcher, guard=self.guard, loans=self.loans,
                                     servers=servers, token=token) if self.launcher else None
        self.closing = False
        self.stopped = asyncio.Event()  # set when the server must stop (signal or a dead loop)
        self.fatal: BaseException | None = None
        self._tasks: list[asyncio.Task] = []

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
        self._supervise("lease-sweeper", self._sweep_loop())
        if self.autoscaler:
            self._supervise("autoscaler", self.autoscaler.run())
        if self.peer:
            self._supervise("peer-sync", self._peer_loop())

    def _supervise(self, name: str, coro) -> None:
        """A background loop that dies takes the server down loudly instead of limping on."""
        task = asyncio.create_task(coro, name=name)

        def done(t: asyncio.Task) -> None:
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
        self.closing = True
        self.scheduler.close()
        if self.autoscaler:
            await self.autoscaler.stop()
        if self.launcher:
            await self.launcher.close()

    async def close(self) -> None:
        self.closing = True
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

    def fleet_size(self) -> int:
        if self.autoscaler is None:
            return 0
        return self.autoscaler.view.live + self.autoscaler.view.starting

    async def _peer_loop(self) -> None:
        while True:
            wanted = self.autoscaler.wanted if self.autoscaler else 0
            try:
                answer = await self.peer.sync({"name": self.name, **self.loans.borrow_request(wanted, self.fleet_size())})
                granted = answer.get("granted", 0)
                self.loans.borrowed = granted if isinstance(granted, int) and granted >= 0 else 0
            except PeerUnavailable:
                # Keep only what running workers use; ask again when the peer is back.
                in_use = self.fleet_size() - (self.loans.max_workers - self.loans.lent)
                self.loans.borrowed = max(0, min(self.loans.borrowed, in_use))
            await asyncio.sleep(PEER_SYNC_INTERVAL_S)

    def grant_loan(self, want: int, in_use: int) -> int:
        wanted = self.autoscaler.wanted if self.autoscaler else 0
        return self.loans.grant(want, in_use, own_have=self.fleet_size(), own_wanted=wanted)

    # -- reporting -------------------------------------------------------------------------
    async def status(self) -> dict:
        counts = await self.store.counts()
        workers = self.autoscaler.status() if self.autoscaler else {"live": 0, "starting": 0, "max": 0, "allowed": 0}
        peer = None
        if self.peer:
            peer = {"url": self.peer.url, "name": self.peer.name, "reachable": self.peer.reachable(3 * PEER_SYNC_INTERVAL_S + self.peer.timeout_s),
                    "error": self.peer.last_error}
        launcher = {"kind": "none"}
        if self.launcher:
            launcher = {**self.launcher.status(), "guard": self.guard.status()}
        return {
            "server": self.name,
            "url": self.settings.url,
            "queued": len(self.scheduler.queued),
            "running": len(self.scheduler.leases),
            "completed": counts.get("completed", 0),
            "failed": counts.get("failed", 0),
            "oldest_queued_age_s": round(self.scheduler.oldest_wait_s(), 3),
            "backlog_cost": self.scheduler.backlog_cost,
            "jobs_per_s": self.scheduler.jobs_per_s(),
            "workers": workers,
            "workers_reporting": len(self.registry.seen_within(self.settings.worker_dead_s)),
            "loans": {"borrowed": self.loans.borrowed, "lent": self.loans.lent},
            "peer": peer,
            "launcher": launcher,
            "closing": self.closing,
        }


NODE = web.AppKey("node", Node)
