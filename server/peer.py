"""The client side of the peer protocol, over the shared HTTP layer; every reply is checked.

Any failure (transport, 5xx, a 4xx such as a wrong token, or a reply of the wrong shape) raises
a `common.http.HttpError` and is remembered in `last_error` for /status.
"""

from __future__ import annotations

import time
from typing import Any

from common.http import AiohttpTransport, HttpClient, HttpError, NotFound, Unavailable
from server.views import check_finished_item, check_work_status

SYNC_INTERVAL_S = 1.0


class PeerClient:
    def __init__(self, url: str, token: str, timeout_s: float) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self.timeout_s = timeout_s
        self._transport: AiohttpTransport | None = None
        self._http: HttpClient | None = None
        self.name: str | None = None  # learned from sync
        self.last_ok = 0.0  # time.monotonic() of the last good answer
        self.last_error: str | None = None

    async def start(self) -> None:
        self._transport = AiohttpTransport()
        self._http = HttpClient(
            self.url, self._transport, headers={"Authorization": f"Bearer {self._token}"}, timeout_s=self.timeout_s
        )

    async def close(self) -> None:
        if self._transport is not None:
            await self._transport.close()

    def reachable(self) -> bool:
        """Answered within the last few sync intervals."""
        return time.monotonic() - self.last_ok <= 3 * SYNC_INTERVAL_S + self.timeout_s

    async def _json(self, method: str, path: str, *, timeout_s: float | None = None, json_body: Any = None) -> Any:
        assert self._http is not None, "start() first"
        try:
            value = (
                await self._http.call(
                    method, path, json_body=json_body, timeout_s=timeout_s, idempotent=method == "GET"
                )
            ).json()
        except NotFound:
            self._ok()
            raise
        except HttpError as exc:
            self.last_error = str(exc)
            raise
        self._ok()
        return value

    def _ok(self) -> None:
        self.last_ok = time.monotonic()
        self.last_error = None

    def _bad_reply(self, why: str) -> Unavailable:
        self.last_error = f"{self.url}: bad reply: {why}"
        return Unavailable(self.last_error, url=self.url)

    async def pull(self, top: int) -> list[dict[str, Any]]:
        """The peer's own undelivered results (it does not ask its peer: no ping-pong)."""
        body = await self._json("POST", f"/internal/peer/pull?top={top}")
        if not isinstance(body, list) or len(body) > top:
            raise self._bad_reply("pull answer is not a list of at most top items")
        try:
            return [check_finished_item(item, self.name) for item in body]
        except ValueError as exc:
            raise self._bad_reply(str(exc)) from None

    async def get_work(self, work_id: str, wait_s: float) -> dict[str, Any]:
        """The peer's /work answer for one of its jobs; NotFound when it knows no such job."""
        body = await self._json(
            "GET", f"/internal/peer/work/{work_id}?wait={wait_s:.3f}", timeout_s=self.timeout_s + wait_s
        )
        try:
            return check_work_status(body, work_id)
        except ValueError as exc:
            raise self._bad_reply(str(exc)) from None

    async def sync(self, payload: dict[str, Any]) -> int:
        """One loan sync; returns the quota granted to this server."""
        body = await self._json("POST", "/internal/peer/sync", json_body=payload)
        granted = body.get("granted") if isinstance(body, dict) else None
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(granted, int) or isinstance(granted, bool) or granted < 0 or not isinstance(name, str):
            raise self._bad_reply("sync answer lacks name and a non-negative integer granted")
        self.name = name
        return granted
