"""What the two servers keep in step each second: quota loans (server/loans.py) and the workers
each has reaped, whose credentials both refuse from then on."""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

from common.http import HttpError
from server.clock import SYSTEM_CLOCK, Clock
from server.loans import Loans
from server.peer import SYNC_INTERVAL_S, PeerClient
from server.store import Store

log = logging.getLogger(__name__)

REVOKED_KEEP_S = 86_400.0  # a reaped worker that has not given up after a day never will
SHARE_RECENT_S = 600.0  # revocations told to the peer with every sync for this long
LENT_KEY = "loans.lent"
REVOKED_KEY = "revoked_workers"


class Fleet(Protocol):
    """What loans need of the autoscaler: the fleet size it wants and has."""

    wanted: int

    def fleet_size(self) -> int: ...


class Revocations:
    """Worker ids whose credentials are revoked, with when (wall clock: they are saved)."""

    def __init__(self, store: Store, clock: Clock = SYSTEM_CLOCK) -> None:
        self.store = store
        self.clock = clock
        self._revoked: dict[str, float] = {}
        self._dirty = False

    async def load(self) -> None:
        raw = await self.store.get_meta(REVOKED_KEY)
        try:
            loaded = json.loads(raw) if raw else {}
            self._revoked = {str(k): float(v) for k, v in loaded.items()}
        except (ValueError, AttributeError, TypeError):
            log.warning("ignoring an unreadable list of revoked workers")

    def __contains__(self, worker: str) -> bool:
        return worker in self._revoked

    def revoke(self, workers: list[str]) -> None:
        now = self.clock.steady_wall()
        for worker in workers:
            if isinstance(worker, str) and worker not in self._revoked and len(worker) <= 128:
                self._revoked[worker] = now
                self._dirty = True

    def recent(self) -> list[str]:
        cutoff = self.clock.steady_wall() - SHARE_RECENT_S
        return [w for w, at in self._revoked.items() if at >= cutoff][-1000:]

    async def save(self) -> None:
        """Prune old entries and save if anything changed (relaxed: losing it only un-revokes
        workers that were silent anyway)."""
        cutoff = self.clock.steady_wall() - REVOKED_KEEP_S
        old = [w for w, at in self._revoked.items() if at < cutoff]
        for worker in old:
            del self._revoked[worker]
        if self._dirty or old:
            self._dirty = False
            await self.store.set_meta(REVOKED_KEY, json.dumps(self._revoked))


class Peering:
    def __init__(
        self,
        name: str,
        *,
        loans: Loans,
        revocations: Revocations,
        store: Store,
        peer: PeerClient | None,
        fleet: Fleet | None,
    ) -> None:
        self.name = name
        self.loans = loans
        self.revocations = revocations
        self.store = store
        self.peer = peer
        self.fleet = fleet
        self._saved_lent: int | None = None

    async def load(self) -> None:
        raw = await self.store.get_meta(LENT_KEY)
        if raw is not None and raw.isdigit():
            self.loans.lent = self._saved_lent = min(int(raw), self.loans.max_workers)

    def _have_wanted(self) -> tuple[int, int]:
        return (self.fleet.fleet_size(), self.fleet.wanted) if self.fleet else (0, 0)

    async def sync(self, want: int, in_use: int, revoked: list[str]) -> dict[str, Any]:
        """Lender side: grant, save what is lent (before answering), take the peer's revocations."""
        have, wanted = self._have_wanted()
        granted = self.loans.grant(want, in_use, own_have=have, own_wanted=wanted)
        if granted != self._saved_lent:
            await self.store.set_meta(LENT_KEY, str(granted), durable=True)
            self._saved_lent = granted
        self.revocations.revoke(revoked)
        return {"name": self.name, "granted": granted, "revoked": self.revocations.recent()}

    async def sync_once(self) -> None:
        """Borrower side: one exchange with the peer (the node's peer-sync loop calls it)."""
        assert self.peer is not None
        have, wanted = self._have_wanted()
        request = {"name": self.name, **self.loans.borrow_request(wanted, have), "revoked": self.revocations.recent()}
        try:
            granted, revoked = await self.peer.sync(request)
        except HttpError:
            self.loans.peer_unreachable(have)
            return
        self.loans.borrowed = granted
        self.revocations.revoke(revoked)
        await self.revocations.save()


__all__ = ["SYNC_INTERVAL_S", "Peering", "Revocations"]
