"""The live dashboard of a server: both servers side by side, from either.

- `GET /` and `GET /dashboard` serve the page, `GET /dashboard/assets/<name>` its script and
  style (server/static/, shipped with the package: nothing comes from the internet);
- `GET /dashboard/data?since=C&peer_since=C` answers this server's panel and its peer's
  (server/panel.py), each with the samples the page lacks after its cursor C;
- `GET /internal/peer/dashboard?since=C` (peer credential) answers this server's panel alone.

The peer's panel is kept here as a mirror: its timeline is merged in fetch by fetch, and a page
gets its samples from the mirror. However many pages are open, at most one fetch is in flight, none
starts within PEER_REFRESH_S of the last, and none while peer sync finds the peer unreachable; a
peer that does not answer is shown as unreachable, not as an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.http import HttpError
from server import panel
from server.peer import PeerClient
from server.timeline import HISTORY_S, SAMPLE_INTERVAL_S, Sampler, Timeline

if TYPE_CHECKING:
    from server.node import Node

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
PEER_REFRESH_S = 0.5


@dataclasses.dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str


ASSET_TYPES = {
    "dashboard.html": "text/html",
    "dashboard.css": "text/css",
    "dashboard.js": "text/javascript",
}


def asset(name: str) -> Asset | None:
    """A file of the page (read once), None for any other name."""
    content_type = ASSET_TYPES.get(name)
    return None if content_type is None else _read(name, content_type)


@functools.cache  # only ever called with the names in ASSET_TYPES: the cache stays that small
def _read(name: str, content_type: str) -> Asset:
    return Asset((STATIC_DIR / name).read_bytes(), content_type)


class PeerView:
    """The peer's panel as last fetched; its timeline a mirror of the peer's."""

    def __init__(self, peer: PeerClient, clock: Callable[[], float]) -> None:
        self.peer = peer
        self.clock = clock  # monotonic seconds
        self.timeline = Timeline()
        self.latest: dict[str, Any] | None = None  # the last panel fetched, less its timeline
        self.answering = False
        self.fetched_at = -1e9
        self._fetch: asyncio.Task[None] | None = None

    async def panel(self, cursor: str | None) -> dict[str, Any]:
        await self._refresh()
        if not self.answering or self.latest is None:
            return {"server": self.peer.name or "peer", "reachable": False}
        return {**self.latest, "reachable": True, "timeline": self.timeline.columns(cursor)}

    async def _refresh(self) -> None:
        if self._fetch is None:
            if self.clock() - self.fetched_at < PEER_REFRESH_S:
                return
            if not self.peer.reachable():  # sync finds it down: don't make every page wait for a timeout
                self.answering = False
                return
            self._fetch = asyncio.create_task(self._fetch_once(), name="peer dashboard")
        # A page that goes away (its request cancelled) leaves the fetch running for the others.
        await asyncio.shield(self._fetch)

    async def _fetch_once(self) -> None:
        try:
            found = await self.peer.dashboard(self.timeline.cursor if self.latest is not None else None)
        except HttpError as exc:
            if self.answering:
                log.info("peer dashboard unavailable: %s", exc)
            self.answering = False
        else:
            self.timeline.merge(found.pop("timeline"))
            self.latest = found
            self.answering = True
        finally:
            self.fetched_at = self.clock()
            self._fetch = None

    async def close(self) -> None:
        if self._fetch is not None:
            self._fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fetch


class Dashboard:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.timeline = Timeline()
        self.sampler = Sampler(node.recorder, node.clock)
        self.peer_view = PeerView(node.peer, node.clock.mono) if node.peer else None

    async def sample(self) -> None:
        """One sample of this server (the node runs this every SAMPLE_INTERVAL_S): sizes and
        counters only, nothing that grows with the queue."""
        node = self.node
        reporting = node.registry.seen_within(node.settings.worker_dead_s)
        self.timeline.add(
            self.sampler.sample(
                queued=len(node.scheduler.queued),
                running=len(node.scheduler.leases),
                workers=[w.busy for w in reporting],
            )
        )

    def own(self, cursor: str | None) -> dict[str, Any]:
        """This server's panel (what the peer asks for)."""
        return panel.build(self.node, self.timeline, cursor)

    async def data(self, cursor: str | None, peer_cursor: str | None) -> dict[str, Any]:
        """What the page polls: this server's panel first, then the peer's (or that it is unreachable)."""
        servers = [{**self.own(cursor), "reachable": True}]
        if self.peer_view is not None:
            servers.append(await self.peer_view.panel(peer_cursor))
        return {
            "server": self.node.name,
            "at": round(self.node.clock.wall(), 3),
            "interval_s": SAMPLE_INTERVAL_S,
            "history_s": HISTORY_S,
            "servers": servers,
        }

    async def close(self) -> None:
        if self.peer_view is not None:
            await self.peer_view.close()
