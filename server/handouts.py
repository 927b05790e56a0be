"""pullCompleted: results handed out in two phases, so none is lost inside the system.

A pull reserves this server's undelivered results under a fresh hand-out id and asks the peer
for its own the same way (the peer reserves them under an id it returns). The answer is then
written to the client; only once the whole response has been handed to the client's connection
are the reservations confirmed (delivered). If writing fails, this server's reservation is
released at once; the peer's lapses after `handout_confirm_s`, the deadline within which a
confirmation must reach it. A peer answer that arrives after our timeout is never used, so its
reservation lapses too and those results are handed out by a later pull.

The guarantee (README): every finished job is handed out by pullCompleted at least once while
its result is kept. A result is handed out twice only when a response carrying it could not be
confirmed: the connection failed while writing it, this server stopped or crashed between
writing and confirming, or the confirmation could not reach the peer within the deadline. A
response fully written but lost afterwards (the client died, the network dropped it) counts as
delivered: `GET /work/{id}` still answers for every job until its result expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from common.http import HttpError
from common.ids import new_token
from server.clock import SYSTEM_CLOCK, Clock
from server.events import Events
from server.peer import PeerClient
from server.store import Store
from server.views import finished_item

log = logging.getLogger(__name__)

Respond = Callable[[list[dict[str, Any]]], Awaitable[None]]
CONFIRM_ATTEMPTS_S = (0.2, 0.5, 1.0, 2.0, 4.0)  # back-off between tries to confirm with the peer


def new_handout_id() -> str:
    return new_token(12)


class Handouts:
    def __init__(
        self,
        store: Store,
        name: str,
        peer: PeerClient | None,
        *,
        confirm_s: float,
        clock: Clock = SYSTEM_CLOCK,
        events: Events | None = None,
    ) -> None:
        self.events = events or Events()
        self.store = store
        self.name = name
        self.peer = peer
        self.confirm_s = confirm_s
        self.clock = clock
        self.for_peer: dict[str, float] = {}  # hand-outs reserved for the peer: id -> deadline (monotonic)
        self._to_confirm: asyncio.Queue[tuple[str, float]] = asyncio.Queue()  # the peer's, with deadline
        self.confirmed_total = 0
        self.lapsed_total = 0

    async def pull(self, top: int, respond: Respond) -> None:
        """Reserve up to `top` results (own first, then the peer's), respond, then confirm."""
        handout = new_handout_id()
        items = [finished_item(self.name, r) for r in await self.store.reserve(top, handout)]
        reserved_own = bool(items)  # an empty reservation has nothing to confirm or release
        peer_handout = None
        if len(items) < top and self.peer is not None:
            try:
                peer_handout, peer_items = await self.peer.reserve(top - len(items))
                items += peer_items
                if not peer_items:
                    peer_handout = None  # nothing of the peer's to confirm
            except HttpError:
                pass  # a peer that is down (or too slow) is skipped: its results wait for it
        items.sort(key=lambda item: item["completed_at"] or 0.0, reverse=True)
        try:
            await respond(items)
        except BaseException:
            if reserved_own:
                await asyncio.shield(self.store.unreserve(handout))  # the peer's lapses by itself
            raise
        if reserved_own:
            await asyncio.shield(self.store.confirm(handout))
        self.events.handed_out([item["work_id"] for item in items])
        if peer_handout is not None:
            self._to_confirm.put_nowait((peer_handout, self.clock.mono() + self.confirm_s))

    # -- the peer's side -------------------------------------------------------------------
    async def reserve_for_peer(self, top: int) -> dict[str, Any]:
        handout = new_handout_id()
        records = await self.store.reserve(top, handout)
        if records:
            self.for_peer[handout] = self.clock.mono() + self.confirm_s
        return {"handout": handout, "items": [finished_item(self.name, r) for r in records]}

    async def confirm_for_peer(self, handout: str) -> int:
        """The peer handed these results out: delivered. An unknown or lapsed hand-out confirms
        nothing (its results may already be reserved again under another id)."""
        if self.for_peer.pop(handout, None) is None:
            return 0
        return await self.store.confirm(handout)

    async def expire(self) -> int:
        """Release the peer's reservations that were not confirmed in time (the sweep calls this)."""
        now = self.clock.mono()
        lapsed = [h for h, deadline in self.for_peer.items() if deadline <= now]
        for handout in lapsed:
            del self.for_peer[handout]
            released = await self.store.unreserve(handout)
            self.lapsed_total += released
            log.warning(
                "hand-out %s to the peer was not confirmed in time: %d result(s) pullable again", handout, released
            )
        return len(lapsed)

    # -- confirming with the peer ----------------------------------------------------------
    async def confirm_loop(self) -> None:
        """Send confirmations of the peer's hand-outs, retrying until their deadline."""
        assert self.peer is not None
        while True:
            handout, deadline = await self._to_confirm.get()
            for pause in (0.0, *CONFIRM_ATTEMPTS_S):
                await asyncio.sleep(pause)
                if self.clock.mono() >= deadline:
                    log.warning(
                        "could not confirm hand-out %s with the peer in time; it will hand them out again", handout
                    )
                    break
                with contextlib.suppress(HttpError):
                    await self.peer.confirm(handout)
                    self.confirmed_total += 1
                    break
