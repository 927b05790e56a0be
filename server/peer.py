"""The client side of the peer protocol: one ClientSession for the server's whole life."""
from __future__ import annotations

import logging
import time

import aiohttp

log = logging.getLogger(__name__)


class PeerUnavailable(Exception):
    """The peer did not answer usefully (down, timing out, or erroring)."""


class PeerClient:
    def __init__(self, url: str, token: str, timeout_s: float) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self.name: str | None = None  # learned from sync
        self.last_ok: float = 0.0
        self.last_error: str | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self._token}"},
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def reachable(self, within_s: float) -> bool:
        return time.time() - self.last_ok <= within_s

    async def _call(self, method: str, path: str, *, timeout_s: float | None = None, **kwargs):
        """(status, decoded JSON body). Raises PeerUnavailable for transport errors and 5xx."""
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.timeout_s)
        try:
            async with self._session.request(method, self.url + path, timeout=timeout, **kwargs) as resp:
                body = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise PeerUnavailable(self.last_error) from None
        if status >= 500 or status == 401:
            self.last_error = f"HTTP {status}: {body}"
            raise PeerUnavailable(self.last_error)
        self.last_ok = time.time()
        self.last_error = None
        return status, body

    async def pull(self, top: int) -> list[dict]:
        """The peer's own undelivered results (it does not ask its peer: no ping-pong)."""
        _, body = await self._call("POST", f"/internal/peer/pull?top={top}")
        return body if isinstance(body, list) else []

    async def get_work(self, work_id: str, wait_s: float) -> dict | None:
        status, body = await self._call("GET", f"/internal/peer/work/{work_id}?wait={wait_s:g}",
                                        timeout_s=self.timeout_s + wait_s)
        return body if status == 200 else None

    async def sync(self, payload: dict) -> dict:
        _, body = await self._call("POST", "/internal/peer/sync", json=payload)
        self.name = body.get("name")
        return body
