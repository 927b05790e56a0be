"""The bench's PUT /enqueue: fail-over only where common.http's policy allows, and its stop reasons."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import NamedTuple

from common.http import HttpClient, Refused, Unavailable, backoff_s


class BenchError(Exception):
    """The bench could not go on: a request got no usable answer."""

    kind = "lost"


class NoServer(BenchError):
    """No server could be connected to."""

    kind = "unreachable"


class JobRefused(BenchError):
    """A server refused the bench's jobs (4xx): the parameters do not suit it."""

    kind = "refused"


class Ack(NamedTuple):
    """An enqueue's answer: which server stored the job, its id, and its result when the server
    hashed it on arrival (hex; None: it went to the fleet)."""

    server: int
    work_id: str
    result: str | None


class Enqueuer:
    """PUT /enqueue to the server a job's index points at. One that cannot be connected to is
    skipped for the next; 429/503 (queue full) is retried on the same server after Retry-After
    (counted in `retries`); a refusal or a lost answer stops the bench: the job may have been
    stored, and sending it again elsewhere could run it twice."""

    def __init__(self, clients: Sequence[HttpClient], iterations: int) -> None:
        self.clients = list(clients)
        self.target = f"/enqueue?iterations={iterations}"
        self.retries = 0

    async def put(self, index: int, body: bytes) -> Ack:
        """The answer for the body stored by the server `index` points at, or the next one."""
        failures: list[str] = []
        n = len(self.clients)
        skipped = busy = 0
        while True:
            client = self.clients[(index + skipped) % n]
            try:
                answer = await client.call("PUT", self.target, body=body, idempotent=False)
                item = answer.json_object()
                work_id, result = item.get("work_id"), item.get("result")
                if not isinstance(work_id, str):
                    raise Unavailable("no work_id in the answer", url=answer.url, status=answer.status)
                return Ack((index + skipped) % n, work_id, result if isinstance(result, str) else None)
            except Refused as exc:
                raise JobRefused(f"{client.base_url} refused a job: {exc.reason}") from None
            except Unavailable as exc:
                if exc.unreachable:
                    failures.append(f"{client.base_url}: {exc.reason}")
                    skipped += 1
                    if skipped >= n:
                        raise NoServer("no server accepts jobs: " + "; ".join(failures)) from None
                elif exc.not_done:
                    self.retries += 1
                    await asyncio.sleep(backoff_s(busy, exc))
                    busy += 1
                elif exc.status is None:
                    raise BenchError(f"{client.base_url} gave no answer to an enqueue: {exc.reason}") from None
                else:
                    raise BenchError(f"{client.base_url} failed an enqueue: {exc.reason}") from None
