"""One server's internal API as a worker sees it, over the shared HTTP layer (common.http).

Retry classes follow common.http: a lease is not idempotent (a repeated lease after a lost answer
would hand out more jobs), so the lease loop backs off instead of retrying blindly; complete,
heartbeat and release are idempotent on the server (first result wins), so they may be repeated.

Every report names the lease (work id and lease id) it is about. The server refuses a request
naming any lease that is not this worker's (409, listing them): those entries are dropped and
the rest sent again. A batch refused as too large (413) is split and sent in halves.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, NamedTuple

from common.http import HttpClient, Refused, Transport, Unavailable
from common.wire import WORKER_ID_HEADER, ProtocolError, unpack_lease

log = logging.getLogger(__name__)

# Beyond the long-poll wait itself: time for the server to answer and the bodies to arrive.
TRANSFER_MARGIN_S = 30.0
CALL_TIMEOUT_S = 20.0

Report = tuple[str, str, str]  # (work id, lease id, digest hex or error text)
Held = tuple[str, str]  # (work id, lease id)


@dataclasses.dataclass(frozen=True)
class LeasedJob:
    work_id: str
    lease_id: str
    iterations: int
    body: bytes | memoryview  # a view into the lease answer (no copy)
    server: str  # URL of the server that owns it

    @property
    def held(self) -> Held:
        return self.work_id, self.lease_id


class Leased(NamedTuple):
    """A lease answer: how long its leases last, its jobs, and whether the server still had
    jobs queued after these (a server from before that field: whether any came)."""

    lease_s: float
    jobs: list[LeasedJob]
    more: bool


def refused_ids(exc: Refused) -> set[str]:
    """The work ids a 409 answer lists as refused (empty when it lists none)."""
    try:
        rejected = json.loads(exc.body).get("rejected", [])
        return {r["work_id"] for r in rejected if isinstance(r, dict) and isinstance(r.get("work_id"), str)}
    except (ValueError, AttributeError, TypeError):
        return set()


class ServerClient:
    def __init__(self, url: str, credential: str, worker_id: str, transport: Transport) -> None:
        self.url = url.rstrip("/")
        self.http = HttpClient(
            self.url,
            transport,
            timeout_s=CALL_TIMEOUT_S,
            headers={"Authorization": f"Bearer {credential}", WORKER_ID_HEADER: worker_id},
        )

    async def lease(self, max_jobs: int, wait_s: float) -> Leased:
        """Up to max_jobs jobs; long-polls up to wait_s for at least one."""
        answer = await self.http.call(
            "POST",
            f"/internal/lease?max={max_jobs}&wait={wait_s:.3f}",
            timeout_s=wait_s + TRANSFER_MARGIN_S,
            idempotent=False,
        )
        try:
            header, bodies = unpack_lease(answer.body)
            jobs = [
                LeasedJob(str(j["work_id"]), str(j["lease_id"]), int(j["iterations"]), body, self.url)
                for j, body in zip(header["jobs"], bodies, strict=True)
            ]
            more = header.get("more", bool(jobs))
            if not isinstance(more, bool):
                raise ProtocolError(f"bad lease header more {more!r}")
            return Leased(float(header["lease_s"]), jobs, more)
        except (ProtocolError, KeyError, TypeError, ValueError) as exc:
            raise Unavailable(f"{self.url}: {exc}", url=self.url) from None

    async def complete(self, results: list[Report], failures: list[Report], stats: dict[str, Any]) -> int:
        """Report results and failures; returns how many results the server took as new."""
        payload = {
            "results": [{"work_id": w, "lease_id": lease, "result": digest} for w, lease, digest in results],
            "failures": [{"work_id": w, "lease_id": lease, "error": error} for w, lease, error in failures],
            "stats": stats,
        }
        try:
            answer = await self.http.call("POST", "/internal/complete", json_body=payload, idempotent=True)
        except Refused as exc:
            if exc.status == 413 and len(results) + len(failures) > 1:
                entries = [(True, r) for r in results] + [(False, f) for f in failures]
                total = 0
                for part in (entries[: len(entries) // 2], entries[len(entries) // 2 :]):
                    total += await self.complete([r for ok, r in part if ok], [f for ok, f in part if not ok], stats)
                return total
            refused = refused_ids(exc) if exc.status == 409 else set()
            if not refused:
                raise
            log.warning(
                "%s refused %d report(s) as not this worker's leases: %s",
                self.url,
                len(refused),
                ", ".join(sorted(refused)[:5]),
            )
            results = [r for r in results if r[0] not in refused]
            failures = [f for f in failures if f[0] not in refused]
            if not results and not failures:
                return 0
            return await self.complete(results, failures, stats)
        accepted = answer.json_object().get("accepted", 0)
        return accepted if isinstance(accepted, int) else 0

    async def heartbeat(self, held: list[Held], stats: dict[str, Any]) -> list[Held]:
        """Extends these leases; returns those this worker no longer holds."""
        payload = {"leases": [{"work_id": w, "lease_id": lease} for w, lease in held], "stats": stats}
        try:
            answer = await self.http.call("POST", "/internal/heartbeat", json_body=payload, idempotent=True)
        except Refused as exc:
            refused = refused_ids(exc) if exc.status == 409 else set()
            if not refused:
                raise
            return [h for h in held if h[0] in refused]  # not ours (any more): treat as lost
        lost = answer.json_object().get("lost", [])
        if not isinstance(lost, list):
            return []
        return [
            (e["work_id"], e["lease_id"])
            for e in lost
            if isinstance(e, dict) and isinstance(e.get("work_id"), str) and isinstance(e.get("lease_id"), str)
        ]

    async def release(self, held: list[Held], stats: dict[str, Any]) -> None:
        payload = {"leases": [{"work_id": w, "lease_id": lease} for w, lease in held], "stats": stats}
        try:
            await self.http.call("POST", "/internal/release", json_body=payload, idempotent=True)
        except Refused as exc:
            refused = refused_ids(exc) if exc.status == 409 else set()
            rest = [h for h in held if h[0] not in refused]
            if not refused or not rest:
                raise
            await self.release(rest, stats)
