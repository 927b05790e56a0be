"""Connection-level bounds: how long a request's headers may take, how many connections a server
keeps, and which of them are kept for workers and the peer.

- **Headers.** A request's line and headers must be complete within `header_timeout_s` of its
  first byte; otherwise the connection is closed (no answer: the request never began). aiohttp
  has no such timeout: its keep-alive timer starts when a connection goes idle and is not reset by
  partial data, so a client sending a header byte a second is only cut off by keep-alive.
- **Idle connections.** aiohttp's own `keepalive_timeout` (`keepalive_s`) closes a connection
  that carries no request, including one that never sends a byte.
- **Bodies.** server.web.read_pieces bounds each read and the average rate; on a RequestTimeout
  `limits_middleware` writes the 408 and closes the connection at once (no lingering read of a
  body that is not coming). Server-side waits (GET /work?wait, /internal/lease?wait) begin after
  the request was read, so no timer here runs while they hold a request open.
- **Connections.** At most `max_connections` at once. A connection accepted beyond
  max_connections - reserved_connections is *reserved*: it must send its first request within
  header_timeout_s and may only carry /internal/ requests (workers, the peer, the operator); a
  public request on it is answered 503 with Retry-After and the connection closed, and so is one
  that fails authentication. So client connections can never take the last slots from the workers
  and the peer. Beyond max_connections a connection is answered a canned 503 at once, its
  request is read and dropped for up to REFUSED_LINGER_S (so the client reads the answer instead
  of a reset), and it is closed; the connections already open are not touched.

How: a subclass of aiohttp's RequestHandler (aiohttp.web_protocol), made by a web.Server
subclass that GuardedAppRunner puts in place of the one AppRunner builds. It overrides the
asyncio protocol methods (connection_made, data_received, connection_lost) and reads three
internals of aiohttp 3.14: RequestHandler._request_count (requests parsed so far),
RequestHandler._messages (the parsed requests not yet handled, for the new request's body
stream) and web.Server._kwargs (the handler arguments AppRunner resolved). Hence the pin
`aiohttp>=3.14,<4`; tests/unit/test_limits.py drives each path against the installed aiohttp.
The alternatives are worse: a reverse proxy in front is a deployment requirement the project
does not have, and a timer per request in a middleware starts only after the headers are read.

Not bounded here: a client that reads a response slowly (no write timeout); the rest of a
request pipelined behind a complete one in the same packet (keep-alive still closes it); and
connections per address (an attacker cycling connections can hold reserved slots for
header_timeout_s each; a firewall's per-address limit is the answer to that).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import resource
from typing import Any, cast

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestHandler

from server.auth import required_role
from server.web import BODY_TIMED_OUT, dumps, error_response

log = logging.getLogger(__name__)

REFUSED_LINGER_S = 1.0  # a refused connection is read (and its data dropped) this long before it is closed
MAX_REFUSED_LINGERING = 256  # beyond this many refused connections lingering at once, close without an answer
FD_MARGIN = 256  # file descriptors besides the connections: the database, logs, peer and cloud clients
AUTH_REFUSALS = frozenset({400, 401, 403})  # what server.auth answers a request it does not let through


@dataclasses.dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 1024
    reserved_connections: int = 64  # of max_connections, for /internal/ traffic only
    header_timeout_s: float = 10.0


class Admission(enum.Enum):
    OPEN = "open"  # any request
    RESERVED = "reserved"  # /internal/ requests only
    REFUSED = "refused"  # a canned 503, then closed


def _canned_refusal(limits: ConnectionLimits) -> bytes:
    body = dumps({"error": f"too many connections (max_connections {limits.max_connections}); retry later"})
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class Connections:
    """The live connection count and what happened to the rest, shared by one server's handlers."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.refusal = _canned_refusal(limits)
        self.open = 0  # admitted (open or reserved) and not yet lost
        self.lingering = 0  # refused, answered, not yet closed
        self.refused_total = 0
        self.reserved_refusals_total = 0  # public requests refused on reserved connections
        self.header_timeouts_total = 0
        self.body_timeouts_total = 0

    def admit(self) -> Admission:
        if self.open >= self.limits.max_connections:
            self.refused_total += 1
            return Admission.REFUSED
        self.open += 1
        if self.open > self.limits.max_connections - self.limits.reserved_connections:
            return Admission.RESERVED
        return Admission.OPEN

    def status(self) -> dict[str, int]:
        return {
            "open": self.open,
            "lingering_refused": self.lingering,
            "max": self.limits.max_connections,
            "reserved": self.limits.reserved_connections,
            "refused_total": self.refused_total,
            "reserved_refusals_total": self.reserved_refusals_total,
            "header_timeouts_total": self.header_timeouts_total,
            "body_timeouts_total": self.body_timeouts_total,
        }


CONNECTIONS = web.AppKey("connections", Connections)


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection protocol plus the header deadline and the connection cap."""

    __slots__ = ("_connections", "_counted", "_header_timer", "_last_body", "_refused", "admission")

    def __init__(self, manager: web.Server, connections: Connections, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._connections = connections
        self._counted = False  # holds a place in connections.open
        self._header_timer: asyncio.TimerHandle | None = None  # also a refused connection's close
        self._last_body: StreamReader | None = None  # the body stream of the last request parsed
        self._refused: asyncio.Transport | None = None  # set while a refused connection lingers
        self.admission = Admission.OPEN

    # -- admission -------------------------------------------------------------------------
    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's TCP transport is one without subclassing it
        self.admission = self._connections.admit()
        if self.admission is Admission.REFUSED:
            self._refuse(transport)
            return
        self._counted = True
        super().connection_made(transport)
        if self.admission is Admission.RESERVED:
            self._arm_header_timer()  # a reserved slot is not held by an idle connection

    def _refuse(self, transport: asyncio.Transport) -> None:
        connections = self._connections
        if connections.lingering >= MAX_REFUSED_LINGERING:
            transport.abort()
            return
        connections.lingering += 1
        self._refused = transport
        transport.write(connections.refusal)
        if transport.can_write_eof():
            transport.write_eof()
        self._header_timer = asyncio.get_running_loop().call_later(REFUSED_LINGER_S, transport.close)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_header_timer()
        if self._refused is not None:
            self._refused = None
            self._connections.lingering -= 1
            return
        if self._counted:
            self._counted = False
            self._connections.open -= 1
        super().connection_lost(exc)

    # -- the header deadline ---------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._refused is not None:
            return  # read and dropped until the refused connection closes
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:  # a request's headers are complete (start() has not taken it yet)
            self._disarm_header_timer()
            self._last_body = self._messages[-1][1] if self._messages else None
        elif data and self._header_timer is None and self._between_requests():
            self._arm_header_timer()  # the first bytes of a new request

    def _between_requests(self) -> bool:
        """Whether new bytes begin a request line (no request body is still arriving)."""
        return self._last_body is None or self._last_body.is_eof()

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        timeout_s = self._connections.limits.header_timeout_s
        self._header_timer = asyncio.get_running_loop().call_later(timeout_s, self._header_timed_out)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        self._connections.header_timeouts_total += 1
        log.debug("closing a connection from %s: no complete request within header_timeout_s", self.peername)
        self.force_close()


class GuardedServer(web.Server):
    """web.Server whose connections are GuardedRequestHandlers sharing one Connections."""

    def __init__(self, handler: Any, *, connections: Connections, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.tally = connections  # (`connections` is aiohttp's list of handlers)

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, self.tally, loop=self._loop, **self._kwargs)


class GuardedAppRunner(web.AppRunner):
    """web.AppRunner serving through a GuardedServer; runner keyword arguments (keepalive_timeout,
    access_log, ...) reach every connection as with AppRunner."""

    __slots__ = ("_connections",)

    def __init__(self, app: web.Application, connections: Connections, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._connections = connections

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # starts and freezes the app, resolves the handler arguments
        return GuardedServer(
            made.request_handler,
            connections=self._connections,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            **made._kwargs,
        )


@web.middleware
async def limits_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: public requests off reserved connections; the connection closed after a 408
    (the rest of that body is not waited for) or after a failed authentication on a reserved one."""
    connections = request.app.get(CONNECTIONS)
    reserved = getattr(request.protocol, "admission", None) is Admission.RESERVED
    if reserved and not _internal(request):
        if connections is not None:
            connections.reserved_refusals_total += 1
        refusal = error_response(503, "server busy: too many connections; retry later", {"Retry-After": "1"})
        refusal.force_close()
        return refusal
    response = await handler(request)
    if request.get(BODY_TIMED_OUT):
        if connections is not None:
            connections.body_timeouts_total += 1
        response.force_close()
        with contextlib.suppress(ConnectionError):
            await response.prepare(request)
            await response.write_eof()
        request.protocol.force_close()
    elif reserved and response.status in AUTH_REFUSALS:
        response.force_close()
    return response


def _internal(request: web.Request) -> bool:
    """An /internal/ path in either spelling, as server.auth reads it (auth decides who may call it)."""
    return required_role(request.path) is not None or required_role(request.raw_path) is not None


def raise_fd_limit(max_connections: int) -> int:
    """Raise the soft limit on open files so max_connections fit (with FD_MARGIN and the refused
    connections lingering); returns the soft limit in force, warning when it is still too low."""
    need = max_connections + MAX_REFUSED_LINGERING + FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit to %d: %s", target, exc)
    if soft != resource.RLIM_INFINITY and soft < need:
        log.warning(
            "open files are limited to %d, max_connections %d needs about %d: raise `ulimit -n`"
            " or lower max_connections, else connections beyond the limit wait in the listen backlog",
            soft,
            max_connections,
            need,
        )
    return soft
