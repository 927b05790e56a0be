"""A lean keep-alive HTTP/1.1 client on asyncio protocols, as a common.http Transport.

Only what the bench sends and the servers answer (Content-Length bodies, no chunked answers, no
redirects), for about a quarter of aiohttp's client CPU per request, so that on a small machine
the load generator measures the servers rather than itself.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping

from yarl import URL

from common.http import Answer, Unavailable, describe_exception

RawAnswer = tuple[int, dict[str, str], bytes]  # status, headers (lower-case names), body


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """(status, headers with lower-case names) of a response head; ValueError if it is not HTTP/1.x."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP/1.x response: {lines[0][:60]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time (Content-Length bodies)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[RawAnswer] | None = None
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.open = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError("server closed the connection"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        try:
            status, headers = parse_head(bytes(self.buffer[:end]))
            if "chunked" in headers.get("transfer-encoding", ""):
                raise ValueError("chunked responses are not supported")
            total = end + 4 + int(headers.get("content-length", "0"))
        except ValueError as exc:
            self.waiter.set_exception(exc)
            self.close()
            return
        if len(self.buffer) < total:
            return
        body = bytes(self.buffer[end + 4 : total])
        del self.buffer[:total]
        if headers.get("connection", "").lower() == "close":
            self.open = False
        self.waiter.set_result((status, headers, body))

    async def request(self, head: bytes, body: bytes | None) -> RawAnswer:
        assert self.transport is not None, "not connected"
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.writelines((head, body) if body else (head,))
        try:
            return await self.waiter
        finally:
            self.waiter = None

    def close(self) -> None:
        self.open = False
        if self.transport is not None:
            self.transport.close()


class _Origin:
    """One server (scheme, host, port) and its idle connections."""

    def __init__(self, origin: str) -> None:
        url = URL(origin)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"not an http(s) URL: {origin!r}")
        self.host, self.tls = url.host, url.scheme == "https"
        self.port = url.port or (443 if self.tls else 80)
        self.authority = url.raw_authority
        self.idle: list[_Connection] = []


class RawHttpTransport:
    """A common.http Transport over pooled keep-alive HTTP/1.1 connections, one request on each
    at a time. `connect_timeout_s` bounds making a connection; `timeout_s` of a call its answer."""

    def __init__(self, *, connect_timeout_s: float) -> None:
        self.connect_timeout_s = connect_timeout_s
        self._origins: dict[str, _Origin] = {}
        self._busy: set[_Connection] = set()

    async def send(
        self, method: str, url: str, *, body: bytes | None, headers: Mapping[str, str], timeout_s: float
    ) -> Answer:
        slash = url.find("/", url.find("//") + 2)
        origin_url, target = (url[:slash], url[slash:]) if slash >= 0 else (url, "/")
        origin = self._origins.get(origin_url) or self._origins.setdefault(origin_url, _Origin(origin_url))
        conn = await self._acquire(origin, url)
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items()) if headers else ""
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: {origin.authority}\r\n"
            f"Content-Length: {len(body) if body else 0}\r\n{extra}\r\n"
        ).encode("latin-1")
        self._busy.add(conn)
        try:
            async with asyncio.timeout(timeout_s):
                status, answer_headers, data = await conn.request(head, body)
        except (OSError, TimeoutError, ValueError) as exc:  # sent (perhaps), but no usable answer came back
            conn.close()
            reason = describe_exception(exc)
            raise Unavailable(f"{url}: {reason}", url=url, reason=reason) from None
        except BaseException:
            conn.close()
            raise
        finally:
            self._busy.discard(conn)
        if conn.open:
            origin.idle.append(conn)
        else:
            conn.close()
        return Answer(status, answer_headers, data, url)

    async def _acquire(self, origin: _Origin, url: str) -> _Connection:
        """An idle connection to the origin, or a new one; Unavailable(not_done=True) when none can be made."""
        while origin.idle:
            conn = origin.idle.pop()
            if conn.open:
                return conn
            conn.close()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await asyncio.get_running_loop().create_connection(
                    _Connection, origin.host, origin.port, ssl=ssl.create_default_context() if origin.tls else None
                )
        except (OSError, TimeoutError) as exc:
            reason = describe_exception(exc)
            raise Unavailable(f"{url}: {reason}", url=url, reason=reason, not_done=True) from None
        return conn

    async def close(self) -> None:
        for conn in [c for origin in self._origins.values() for c in origin.idle] + list(self._busy):
            conn.close()
        for origin in self._origins.values():
            origin.idle.clear()
        await asyncio.sleep(0)  # let the transports finish closing
