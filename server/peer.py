"""The client side of the peer protocol, over the shared HTTP layer; every reply is checked.

Two connection pools: one for the servers' own exchanges (loan sync, result hand-outs and their
confirmations, the dashboard's panel one fetch at a time), one for client lookups proxied to the
peer (`GET /work/{id}` of its jobs, which may long-poll). However many clients wait on the peer's
jobs, they cannot take the connections the servers need to keep in step.

Any failure (transport, 5xx, a 4xx such as a wrong credential, or a reply of the wrong shape)
raises a `common.http.HttpError` and is remembered in `last_error` for the detailed status.
"""

from __future__ import annotations

import time
from typing import Any

from common.http import AiohttpTransport, HttpClient, HttpError, NotFound, Unavailable
from server import panel
from server.views import check_finished_item, check_work_status

SYNC_INTERVAL_S = 1.0
CONTROL_CONNECTIONS = 8
PROXY_CONNECTIONS = 64


class PeerClient:
    def __init__(self, url: str, credential: str, timeout_s: float) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {credential}"}
        self.timeout_s = timeout_s
        self._transports: list[AiohttpTransport] = []
        self._control: HttpClient | None = None
        self._proxy: HttpClient | None = None
        self.name: str | None = None  # learned from sync
        self.last_ok = -1e9  # time.monotonic() of the last good answer
        self.last_error: str | None = None

    async def start(self) -> None:
        control = AiohttpTransport(connections=CONTROL_CONNECTIONS)
        proxy = AiohttpTransport(connections=PROXY_CONNECTIONS)
        self._transports = [control, proxy]
        self._control = HttpClient(self.url, control, headers=self._headers, timeout_s=self.timeout_s)
        self._proxy = HttpClient(self.url, proxy, headers=self._headers, timeout_s=self.timeout_s)

    async def close(self) -> None:
        for transport in self._transports:
            await transport.close()

    def reachable(self) -> bool:
        """Answered within the last few sync intervals."""
        return time.monotonic() - self.last_ok <= 3 * SYNC_INTERVAL_S + self.timeout_s

    async def _json(
        self,
        client: HttpClient | None,
        method: str,
        path: str,
        *,
        timeout_s: float | None = None,
        json_body: Any = None,
    ) -> Any:
        assert client is not None, "start() first"
        try:
            answer = await client.call(
                method, path, json_body=json_body, timeout_s=timeout_s, idempotent=method == "GET"
            )
            value = answer.json()
        except NotFound:
            self._ok()
            raise
        except HttpError as exc:
            self.last_error = str(exc)
            raise
        return value  # callers mark the peer ok once they have checked the reply

    def _ok(self) -> None:
        self.last_ok = time.monotonic()
        self.last_error = None

    def _bad_reply(self, why: str) -> Unavailable:
        self.last_error = f"{self.url}: bad reply: {why}"
        return Unavailable(self.last_error, url=self.url)

    async def reserve(self, top: int) -> tuple[str, list[dict[str, Any]]]:
        """The peer's own undelivered results, reserved for us under the hand-out id returned
        (it does not ask its peer: no ping-pong). Confirm the id once they are handed out."""
        body = await self._json(self._control, "POST", f"/internal/peer/pull?top={top}")
        handout = body.get("handout") if isinstance(body, dict) else None
        items = body.get("items") if isinstance(body, dict) else None
        if (
            not isinstance(handout, str)
            or not 0 < len(handout) <= 64
            or not isinstance(items, list)
            or len(items) > top
        ):
            raise self._bad_reply("pull answer is not a hand-out id with at most top items")
        try:
            checked = [check_finished_item(item, self.name) for item in items]
        except ValueError as exc:
            raise self._bad_reply(str(exc)) from None
        self._ok()
        return handout, checked

    async def confirm(self, handout: str) -> None:
        """Tell the peer the hand-out reached our client (idempotent)."""
        body = await self._json(self._control, "POST", "/internal/peer/confirm", json_body={"handout": handout})
        if not isinstance(body, dict) or not isinstance(body.get("confirmed"), int):
            raise self._bad_reply("confirm answer lacks a count")
        self._ok()

    async def get_work(self, work_id: str, wait_s: float, *, history: bool = False) -> dict[str, Any]:
        """The peer's /work answer for one of its jobs; NotFound when it knows no such job."""
        query = f"?wait={wait_s:.3f}" + ("&history=1" if history else "")
        body = await self._json(
            self._proxy, "GET", f"/internal/peer/work/{work_id}{query}", timeout_s=self.timeout_s + wait_s
        )
        try:
            checked = check_work_status(body, work_id)
        except ValueError as exc:
            raise self._bad_reply(str(exc)) from None
        self._ok()
        return checked

    async def sync(self, payload: dict[str, Any]) -> tuple[int, list[str]]:
        """One loan sync: (quota granted to this server, workers the peer has revoked)."""
        body = await self._json(self._control, "POST", "/internal/peer/sync", json_body=payload)
        if not isinstance(body, dict):
            raise self._bad_reply("sync answer is not an object")
        granted, name, revoked = body.get("granted"), body.get("name"), body.get("revoked", [])
        if not isinstance(granted, int) or isinstance(granted, bool) or not 0 <= granted <= 1_000_000:
            raise self._bad_reply("sync answer lacks a non-negative integer granted")
        if not isinstance(name, str) or not isinstance(revoked, list) or len(revoked) > 10_000:
            raise self._bad_reply("sync answer lacks a name or a list of revoked workers")
        self.name = name
        self._ok()
        return granted, [w for w in revoked if isinstance(w, str)]

    async def dashboard(self, cursor: str | None) -> dict[str, Any]:
        """The peer's own dashboard panel, with the samples after `cursor` (all of them: None), checked."""
        query = f"?since={cursor}" if cursor else ""
        body = await self._json(self._control, "GET", f"/internal/peer/dashboard{query}")
        try:
            checked = panel.check(body)
        except ValueError as exc:
            raise self._bad_reply(str(exc)) from None
        self._ok()
        return checked
