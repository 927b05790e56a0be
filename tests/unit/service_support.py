"""Helpers for the service tests: request bodies as the service reads them, and the worker and
client calls spelled out (lease with a delivery, reports naming leases, pullCompleted)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from server.app import build_app
from server.node import Node
from server.service import Entry, LeasedJob, LeaseGrant, Service
from tests.unit.support import FakeClock, opened_node

DIGEST = bytes(range(64))


class Upload:
    """A request body as the service sees it, in two pieces; remembers its reads. With `gate`, a read waits for
    it (a slow upload); with `error`, the read fails with it."""

    def __init__(
        self,
        body: bytes,
        content_length: int | None = -1,
        *,
        gate: asyncio.Event | None = None,
        error: Exception | None = None,
    ) -> None:
        self.body = body
        self.content_length = len(body) if content_length == -1 else content_length
        self.reads: list[int] = []
        self.gate = gate
        self.error = error
        self.reading = asyncio.Event()

    async def read(self, limit: int) -> list[bytes]:
        self.reads.append(limit)
        self.reading.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        cut = len(self.body) // 3  # in two pieces, as a socket may give them
        return [piece for piece in (self.body[:cut], self.body[cut:]) if piece]


async def lease(service: Service, worker: str = "w1", max_jobs: int = 10, wait_s: float = 0.0) -> LeaseGrant:
    grants: list[LeaseGrant] = []

    async def deliver(grant: LeaseGrant) -> None:
        grants.append(grant)

    await service.lease(worker, max_jobs, wait_s, deliver)
    (grant,) = grants
    return grant


async def lease_one(service: Service, worker: str = "w1") -> LeasedJob:
    (job,) = (await lease(service, worker, max_jobs=1)).jobs
    return job


def result(job: LeasedJob, digest: bytes = DIGEST) -> Entry:
    return Entry(str(job.work_id), job.lease_id, digest)


def held(job: LeasedJob) -> Entry:
    return Entry(str(job.work_id), job.lease_id)


async def pull(service: Service, top: int) -> list[dict[str, Any]]:
    answers: list[list[dict[str, Any]]] = []

    async def respond(items: list[dict[str, Any]]) -> None:
        answers.append(items)

    await service.pull_completed(top, respond)
    (items,) = answers
    return items


def free_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def node_pair(tmp_path: Path, **settings: Any) -> AsyncIterator[tuple[Node, Node]]:
    """Two nodes "a" and "b", each the other's peer, serving their real apps on loopback ports;
    each has its own FakeClock (node.clock)."""
    socks = [free_socket(), free_socket()]
    urls = [f"http://127.0.0.1:{s.getsockname()[1]}" for s in socks]
    runners: list[web.AppRunner] = []
    async with contextlib.AsyncExitStack() as stack:
        nodes = []
        for i, name in enumerate(("a", "b")):
            node = await stack.enter_async_context(
                opened_node(
                    tmp_path / name, clock=FakeClock(), name=name, public_url=urls[i], peer=urls[1 - i], **settings
                )
            )
            runner = web.AppRunner(build_app(node), handle_signals=False, access_log=None)
            await runner.setup()
            runners.append(runner)
            await web.SockSite(runner, socks[i]).start()
            nodes.append(node)
        try:
            yield nodes[0], nodes[1]
        finally:
            for runner in runners:
                await runner.cleanup()
