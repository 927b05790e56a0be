"""One server's internal API as a worker sees it, over the shared HTTP layer (common.http).

Retry classes follow common.http: a lease is not idempotent (a repeated lease after a lost answer
would hand out more jobs), so the lease loop backs off instead of retrying blindly; complete,
heartbeat and release are idempotent on the server (first result wins), so they may be repeated.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from common.http import HttpClient, Transport, Unavailable
from common.wire import WORKER_ID_HEADER, ProtocolError, unpack_lease

# Beyond the long-poll wait itself: time for the server to answer and the bodies to arrive.
TRANSFER_MARGIN_S = 30.0
CALL_TIMEOUT_S = 20.0


@dataclasses.dataclass(frozen=True)
class LeasedJob:
    work_id: str
    iterations: int
    body: bytes
    server: str  # URL of the server that owns it


class ServerClient:
    def __init__(self, url: str, token: str, worker_id: str, transport: Transport) -> None:
        self.url = url.rstrip("/")
        self.http = HttpClient(
            self.url,
            transport,
            timeout_s=CALL_TIMEOUT_S,
            headers={"Authorization": f"Bearer {token}", WORKER_ID_HEADER: worker_id},
        )

    async def lease(self, max_jobs: int, wait_s: float) -> tuple[float, list[LeasedJob]]:
        """(lease seconds, jobs): long-polls up to wait_s for at least one job."""
        answer = await self.http.call(
            "POST",
            f"/internal/lease?max={max_jobs}&wait={wait_s:.3f}",
            timeout_s=wait_s + TRANSFER_MARGIN_S,
            idempotent=False,
        )
        try:
            header, bodies = unpack_lease(answer.body)
            jobs = [
                LeasedJob(str(j["work_id"]), int(j["iterations"]), body, self.url)
                for j, body in zip(header["jobs"], bodies, strict=True)
            ]
            return float(header["lease_s"]), jobs
        except (ProtocolError, KeyError, TypeError, ValueError) as exc:
            raise Unavailable(f"{self.url}: {exc}", url=self.url) from None

    async def complete(
        self, results: list[tuple[str, str]], failures: list[tuple[str, str]], stats: dict[str, Any]
    ) -> dict[str, Any]:
        """Idempotent on the server (first result wins), so safe to retry after any failure."""
        payload = {"results": results, "failures": failures, "stats": stats}
        return (await self.http.call("POST", "/internal/complete", json_body=payload, idempotent=True)).json_object()

    async def heartbeat(self, work_ids: list[str], stats: dict[str, Any]) -> list[str]:
        """Extends these leases; returns the ids this worker no longer holds."""
        payload = {"work_ids": work_ids, "stats": stats}
        answer = (await self.http.call("POST", "/internal/heartbeat", json_body=payload, idempotent=True)).json_object()
        lost = answer.get("lost", [])
        return [w for w in lost if isinstance(w, str)] if isinstance(lost, list) else []

    async def release(self, work_ids: list[str], stats: dict[str, Any]) -> None:
        payload = {"work_ids": work_ids, "stats": stats}
        await self.http.call("POST", "/internal/release", json_body=payload, idempotent=True)
