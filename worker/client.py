"""One server's internal API as seen by a worker, with errors sorted into retry-or-not."""
from __future__ import annotations

import asyncio
import dataclasses
import json

import aiohttp

from worker.protocol import WORKER_ID_HEADER, ProtocolError, unpack_lease

# Beyond the long-poll wait itself: time for the server to answer and the bodies to arrive.
TRANSFER_MARGIN_S = 30.0
CALL_TIMEOUT_S = 20.0


class Unavailable(Exception):
    """The server cannot be reached or is overloaded now; trying again later may work."""


class Rejected(Exception):
    """The server refused the request itself (bad token, bad request); retrying cannot help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


@dataclasses.dataclass(frozen=True)
class LeasedJob:
    work_id: str
    iterations: int
    body: bytes
    server: str  # URL of the server that owns it


class ServerClient:
    def __init__(self, url: str, token: str, worker_id: str, session: aiohttp.ClientSession) -> None:
        self.url = url.rstrip("/")
        self.session = session
        self.headers = {"Authorization": f"Bearer {token}", WORKER_ID_HEADER: worker_id}

    async def _post(self, path: str, *, timeout_s: float = CALL_TIMEOUT_S, **kwargs) -> bytes:
        try:
            async with self.session.post(self.url + path, headers=self.headers,
                                         timeout=aiohttp.ClientTimeout(total=timeout_s), **kwargs) as resp:
                data = await resp.read()
                if resp.status == 200:
                    return data
                message = _error_message(data)
                if resp.status in (408, 429) or resp.status >= 500:
                    raise Unavailable(f"{self.url}: HTTP {resp.status}: {message}")
                raise Rejected(resp.status, message)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise Unavailable(f"{self.url}: {type(exc).__name__}: {exc}") from None

    async def _post_json(self, path: str, payload: dict) -> dict:
        data = await self._post(path, json=payload)
        try:
            return json.loads(data)
        except ValueError:
            raise Unavailable(f"{self.url}{path}: answer is not JSON") from None

    async def lease(self, max_jobs: int, wait_s: float) -> tuple[float, list[LeasedJob]]:
        """(lease seconds, jobs): long-polls up to wait_s for at least one job."""
        data = await self._post(f"/internal/lease?max={max_jobs}&wait={wait_s:g}",
                                timeout_s=wait_s + TRANSFER_MARGIN_S)
        try:
            header, bodies = unpack_lease(data)
            jobs = [LeasedJob(str(j["work_id"]), int(j["iterations"]), body, self.url)
                    for j, body in zip(header["jobs"], bodies)]
            return float(header["lease_s"]), jobs
        except (ProtocolError, KeyError, TypeError, ValueError) as exc:
            raise Unavailable(f"{self.url}: {exc}") from None

    async def complete(self, results: list[tuple[str, str]], failures: list[tuple[str, str]], stats: dict) -> dict:
        """Idempotent on the server (first result wins), so safe to retry after any failure."""
        return await self._post_json("/internal/complete", {"results": results, "failures": failures, "stats": stats})

    async def heartbeat(self, work_ids: list[str], stats: dict) -> list[str]:
        """Extends these leases; returns the ids this worker no longer holds."""
        answer = await self._post_json("/internal/heartbeat", {"work_ids": work_ids, "stats": stats})
        lost = answer.get("lost", [])
        return [w for w in lost if isinstance(w, str)] if isinstance(lost, list) else []

    async def release(self, work_ids: list[str], stats: dict) -> None:
        await self._post_json("/internal/release", {"work_ids": work_ids, "stats": stats})


def _error_message(data: bytes) -> str:
    try:
        return str(json.loads(data)["error"])
    except (ValueError, KeyError, TypeError):
        return data[:200].decode(errors="replace")
