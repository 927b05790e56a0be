"""Client load for the soak: enqueues (small bodies and 16-256 KB ones, few iterations, so work
keeps flowing), pullCompleted calls and GET /work lookups (often of the other server's jobs, so
proxied to the peer) against both servers, everything reported to the Checker.
Each call has a timeout; an answer that does not come is recorded as such (the job may or may not
be stored; the pulled results may count as delivered), never retried blindly."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from collections.abc import Sequence

import aiohttp

from tests.faults.checker import Checker, expected

SMALL_MAX = 1024
LARGE = (16 << 10, 256 << 10)
ITERATIONS = (1, 200)
CALL_TIMEOUT_S = 5.0


@dataclasses.dataclass
class LoadStats:
    enqueues: int = 0
    refused: int = 0  # 4xx/503: not stored
    unanswered: int = 0
    pulls: int = 0
    lookups: int = 0
    statuses: dict[int, int] = dataclasses.field(default_factory=dict)

    def note(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1


class Load:
    """`enqueuers` and `pullers` loops against `urls` (the servers themselves, not the proxies)."""

    def __init__(self, urls: Sequence[str], checker: Checker, rng: random.Random) -> None:
        self.urls = list(urls)
        self.checker = checker
        self.rng = rng
        self.stats = LoadStats()
        self.acknowledged: list[str] = []
        self.enqueuing = asyncio.Event()
        self.pulling = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, enqueuers: int = 3, pullers: int = 2, watchers: int = 1) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_S),
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
        )
        self.enqueuing.set()
        self.pulling.set()
        for i in range(enqueuers):
            self._tasks.append(asyncio.create_task(self._enqueue_loop(random.Random(self.rng.random())), name=f"e{i}"))
        for i in range(pullers):
            self._tasks.append(asyncio.create_task(self._pull_loop(random.Random(self.rng.random())), name=f"p{i}"))
        for i in range(watchers):
            self._tasks.append(asyncio.create_task(self._watch_loop(random.Random(self.rng.random())), name=f"w{i}"))

    async def stop_enqueuing(self) -> None:
        """Let each enqueuer finish the call it is in (bounded by its timeout), then stop."""
        self.enqueuing.clear()
        await asyncio.gather(*(t for t in self._tasks if t.get_name().startswith("e")), return_exceptions=True)

    async def close(self) -> None:
        self.enqueuing.clear()
        self.pulling.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # -- loops -------------------------------------------------------------------------------
    def _body(self, rng: random.Random) -> bytes:
        size = rng.randint(0, SMALL_MAX) if rng.random() < 0.4 else rng.randint(*LARGE)
        return rng.randbytes(size)

    async def _enqueue_loop(self, rng: random.Random) -> None:
        while self.enqueuing.is_set():
            body, iterations = self._body(rng), rng.randint(*ITERATIONS)
            await self.enqueue(rng.choice(self.urls), body, iterations)
            await asyncio.sleep(rng.uniform(0.05, 0.3))

    async def enqueue(self, url: str, body: bytes, iterations: int) -> str | None:
        """One PUT /enqueue; the work id when it was acknowledged."""
        assert self._session is not None
        digest = expected(body, iterations)
        self.stats.enqueues += 1
        try:
            async with self._session.put(f"{url}/enqueue", params={"iterations": str(iterations)}, data=body) as resp:
                self.stats.note(resp.status)
                answer = await resp.read()
                if resp.status != 200:
                    self.stats.refused += 1
                    return None
        except (aiohttp.ClientError, TimeoutError, asyncio.CancelledError) as exc:
            self.stats.unanswered += 1
            self.checker.unanswered(digest, iterations)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return None
        work_id = str(json.loads(answer)["work_id"])
        self.checker.acknowledged(work_id, digest, iterations)
        self.acknowledged.append(work_id)
        return work_id

    async def _pull_loop(self, rng: random.Random) -> None:
        while True:
            await self.pulling.wait()
            await self.pull(rng.choice(self.urls), rng.randint(1, 100))
            await asyncio.sleep(rng.uniform(0.1, 0.4))

    async def pull(self, url: str, top: int) -> list[dict] | None:
        """One POST /pullCompleted; the items when the answer came."""
        assert self._session is not None
        self.stats.pulls += 1
        try:
            async with self._session.post(f"{url}/pullCompleted", params={"top": str(top)}) as resp:
                self.stats.note(resp.status)
                body = await resp.read()
                if resp.status != 200:
                    self.checker.pulled([])  # refused before anything was handed out (a 4xx or 503)
                    return None
        except (aiohttp.ClientError, TimeoutError, asyncio.CancelledError) as exc:
            self.checker.pull_failed(top)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return None
        items = json.loads(body)
        self.checker.pulled(items)
        return list(items)

    async def _watch_loop(self, rng: random.Random) -> None:
        while True:
            await self.pulling.wait()
            if self.acknowledged:
                work_id = rng.choice(self.acknowledged[-200:])
                self.stats.lookups += 1
                code, answer = await self.work(rng.choice(self.urls), work_id, wait_s=rng.choice([0.0, 0.5]))
                self.checker.watched(work_id, code, answer)
            await asyncio.sleep(rng.uniform(0.1, 0.3))

    async def work(self, url: str, work_id: str, wait_s: float = 0.0) -> tuple[int | None, dict | None]:
        """GET /work/{id}: its status code (None: no answer) and its JSON when it was a 200."""
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_S + wait_s)
        try:
            async with self._session.get(
                f"{url}/work/{work_id}", params={"wait": f"{wait_s:g}"}, timeout=timeout
            ) as resp:
                self.stats.note(resp.status)
                if resp.status != 200:
                    return resp.status, None
                return resp.status, dict(await resp.json())
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None, None
