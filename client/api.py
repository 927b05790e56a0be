"""A small async Python client of a dynwork cluster: enqueue, get, wait, pull and status over its servers.

    async with DynworkClient(["http://127.0.0.1:8001", "http://127.0.0.1:8002"]) as dynwork:
        work_id = await dynwork.enqueue(b"data", iterations=1000)
        item = await dynwork.wait(work_id)          # {"work_id": ..., "status": "completed", "result": ...}
        item = await dynwork.run(b"data", iterations=3)  # both; a job hashed on arrival in one round trip

Every call follows common.http's one retry policy: a read moves on to the next server whenever one
cannot answer; an enqueue or a pull (not idempotent) moves on only when the server certainly did
nothing (no connection, 429/503), and otherwise raises Unavailable saying it may have been applied.
Errors are common.http's: NotFound (unknown work id), Refused (4xx), Unavailable (nobody answered).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from typing import Any, NotRequired, Self, TypedDict
from urllib.parse import quote

from common.http import AiohttpTransport, Failover, HttpClient, HttpError, Transport, Unavailable

DEFAULT_TIMEOUT_S = 10.0  # one HTTP request (a long-poll gets its wait on top)
WAIT_CHUNK_S = 10.0  # one long-poll of `wait`; the servers allow up to long_poll_max_s (20 s by default)
UNAVAILABLE_GRACE_S = 30.0  # `wait` rides out servers that cannot answer for this long
FINISHED = ("completed", "failed")


class ServerStatus(TypedDict):
    """One server's /status answer (`up`), or why it could not give one (`error`)."""

    url: str
    up: bool
    status: NotRequired[dict[str, Any]]
    error: NotRequired[str]


def work_path(work_id: str, wait_s: float = 0.0, *, history: bool = False) -> str:
    """The /work path of a work id (quoted: ids come from users), long-polling `wait_s` seconds,
    with the job's history when asked."""
    query = [f"wait={wait_s:g}"] if wait_s > 0 else []
    if history:
        query.append("history=1")
    return "/work/" + quote(work_id, safe="") + ("?" + "&".join(query) if query else "")


class DynworkClient:
    """The public API of a dynwork cluster. Use `async with` (or call close()): the connections
    are pooled across calls. `transport` replaces the default aiohttp one (then not closed here)."""

    def __init__(
        self, servers: Sequence[str], *, timeout_s: float = DEFAULT_TIMEOUT_S, transport: Transport | None = None
    ) -> None:
        if not servers:
            raise ValueError("DynworkClient needs at least one server")
        self.servers = tuple(s.rstrip("/") for s in servers)
        self.timeout_s = timeout_s
        self._transport = transport
        self._owns_transport = transport is None
        self._failover: Failover | None = None
        self._next_enqueue = random.randrange(len(self.servers))  # round-robin from a random start

    async def __aenter__(self) -> Self:
        self._calls()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_transport and self._transport is not None:
            await self._transport.close()
            self._transport = None
        self._failover = None

    def _calls(self) -> Failover:
        """The servers in order, over one transport (an aiohttp session needs the running loop,
        so the default one is made on first use)."""
        if self._failover is None:
            if self._transport is None:
                self._transport = AiohttpTransport()
            transport = self._transport
            self._failover = Failover([HttpClient(s, transport, timeout_s=self.timeout_s) for s in self.servers])
        return self._failover

    async def enqueue(self, body: bytes, iterations: int) -> str:
        """Store one job; returns its work id. Successive calls start at successive servers."""
        return str((await self._put(body, iterations))["work_id"])

    async def run(self, body: bytes, iterations: int, *, deadline: float | None = None) -> dict[str, Any]:
        """enqueue, then wait: the job's final status. A job the server hashed on arrival comes back
        in the enqueue's own answer ({"work_id", "status": "completed", "result"}), with no GET."""
        answer = await self._put(body, iterations)
        if answer.get("status") in FINISHED:
            return answer
        return await self.wait(str(answer["work_id"]), deadline=deadline)

    async def _put(self, body: bytes, iterations: int) -> dict[str, Any]:
        first = self._next_enqueue
        self._next_enqueue = (first + 1) % len(self.servers)
        index, answer = await self._calls().call(
            "PUT", f"/enqueue?iterations={iterations}", body=body, first=first, idempotent=False, expect_json=True
        )
        item = answer.json_object()
        if not isinstance(item.get("work_id"), str):
            reason = "enqueue answer has no work_id"
            raise Unavailable(f"{self.servers[index]}: {reason}", url=answer.url, status=answer.status, reason=reason)
        return item

    async def get(self, work_id: str, *, wait_s: float = 0.0, history: bool = False) -> dict[str, Any]:
        """A job's status (and result once finished), from any server; with `wait_s` the server
        holds the answer until the job finishes or the time is up; with `history`, what happened
        to it (enqueued, each lease, finished, handed out)."""
        _, answer = await self._calls().call(
            "GET", work_path(work_id, wait_s, history=history), timeout_s=wait_s + self.timeout_s, expect_json=True
        )
        return answer.json_object()

    async def wait(
        self, work_id: str, *, deadline: float | None = None, grace_s: float = UNAVAILABLE_GRACE_S
    ) -> dict[str, Any]:
        """The job's final status, or its latest one once `deadline` (time.monotonic()) passes.
        While no server can answer (a restart, say) it keeps asking for up to grace_s seconds."""
        down_since: float | None = None
        while True:
            wait_s = WAIT_CHUNK_S
            if deadline is not None:
                wait_s = min(wait_s, max(deadline - time.monotonic(), 0.0))
            try:
                item = await self.get(work_id, wait_s=wait_s)
            except Unavailable:
                now = time.monotonic()
                down_since = now if down_since is None else down_since
                if now - down_since >= grace_s or (deadline is not None and now >= deadline):
                    raise
                await asyncio.sleep(min(0.1 + (now - down_since) / 10, 1.0))  # 0.1 s, slowing to 1 s
                continue
            down_since = None
            if item.get("status") in FINISHED or (deadline is not None and time.monotonic() >= deadline):
                return item

    async def pull(self, top: int = 100) -> list[dict[str, Any]]:
        """Take up to `top` finished jobs (each is handed out once across the servers)."""
        _, answer = await self._calls().call("POST", f"/pullCompleted?top={top}", idempotent=False, expect_json=True)
        items = answer.json()
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            reason = "pullCompleted answer is not a list of objects"
            raise Unavailable(f"{answer.url}: {reason}", url=answer.url, status=answer.status, reason=reason)
        return items

    async def status(self) -> list[ServerStatus]:
        """Every server's /status, asked side by side; a server that cannot answer is `up: False`."""
        return list(await asyncio.gather(*(self._status_of(client) for client in self._calls().clients)))

    async def _status_of(self, client: HttpClient) -> ServerStatus:
        try:
            status = (await client.call("GET", "/status")).json_object()
        except HttpError as exc:
            return {"url": client.base_url, "up": False, "error": exc.reason}
        return {"url": client.base_url, "up": True, "status": status}
