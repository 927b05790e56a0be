"""A scripted HTTP server for the client-side unit tests: a real aiohttp server on 127.0.0.1:0
(no mocked sessions), answering each request with the next scripted reply and recording it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int = 200
    body: Any = None  # bytes as they are; anything else as JSON
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    delay_s: float = 0.0  # hold the answer this long (longer than a client's timeout: a lost answer)

    def payload(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()


def error(status: int, message: str = "no", **headers: str) -> Reply:
    return Reply(status, {"error": message}, {k.replace("_", "-"): v for k, v in headers.items()})


@dataclasses.dataclass(frozen=True)
class Hit:
    method: str
    path_qs: str
    body: bytes
    headers: Mapping[str, str]
    peer: Any  # the client's (host, port): one connection or several


class FakeServer:
    def __init__(self, replies: Sequence[Reply]) -> None:
        self.replies = list(replies) or [Reply()]
        self.hits: list[Hit] = []
        self.url = ""
        self.released = asyncio.Event()  # set at shutdown: held answers end then

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.hits.append(Hit(request.method, request.path_qs, body, dict(request.headers), peer))
        reply = self.replies[min(len(self.hits), len(self.replies)) - 1]  # the last one repeats
        if reply.delay_s:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.released.wait(), reply.delay_s)
        return web.Response(status=reply.status, body=reply.payload(), headers=dict(reply.headers))


@contextlib.asynccontextmanager
async def serving(*replies: Reply) -> AsyncIterator[FakeServer]:
    """A FakeServer answering with `replies` in turn (the last one for every request after)."""
    fake = FakeServer(replies)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("")).rstrip("/")
    try:
        yield fake
    finally:
        fake.released.set()
        await server.close()


def dead_url() -> str:
    """A loopback URL nothing listens on: connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@contextlib.contextmanager
def silent_url() -> Any:
    """A loopback URL that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
