"""Who may call what under /internal/: workers, the peer and the operator, each with its own
credential (common.credentials); anything else is a 401 with nothing done.

- /internal/peer/...  the peer server's credential;
- /internal/status    the operator's credential;
- the rest            a worker's credential, for the worker id it names in X-Worker-Id, unless
                      that worker has been reaped (its credential is revoked with it).

Paths are checked in both spellings (decoded and raw), so percent-encoding cannot slip past.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from common.credentials import PREFIX, Role, derive, matches
from common.wire import WORKER_ID_HEADER
from server.web import EVENTS, error_response

INTERNAL = "/internal/"
MAX_WORKER_ID = 128


@dataclasses.dataclass(frozen=True)
class Identity:
    role: Role
    worker: str = ""


IDENTITY = web.RequestKey("identity", Identity)


def required_role(path: str) -> Role | None:
    """The role a path needs, or None for the public API."""
    path = "/" + path.lstrip("/").lower()
    if not path.startswith(INTERNAL):
        return None
    if path.startswith(INTERNAL + "peer/"):
        return Role.PEER
    if path.rstrip("/") == INTERNAL + "status":
        return Role.OPERATOR
    return Role.WORKER


def valid_worker_id(value: str) -> bool:
    return 0 < len(value) <= MAX_WORKER_ID and value.isprintable() and value.strip() == value


def auth_middleware(secret: str, revoked: Callable[[str], bool]) -> Middleware:
    peer, operator = derive(secret, Role.PEER), derive(secret, Role.OPERATOR)

    def authenticate(request: web.Request, role: Role) -> Identity | web.Response:
        """The caller's identity, or the answer that refuses it."""
        header = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        given = header[len(b"Bearer ") :] if header.startswith(b"Bearer ") else b""
        if role is not Role.WORKER:
            return Identity(role) if matches(given, peer if role is Role.PEER else operator) else unauthorized()
        worker = request.headers.get(WORKER_ID_HEADER, "")
        if not valid_worker_id(worker):
            if given.startswith(PREFIX.encode()):  # a credential, but for which worker?
                return error_response(400, f"missing or bad {WORKER_ID_HEADER} header")
            return unauthorized()
        if not matches(given, derive(secret, Role.WORKER, worker)):
            return unauthorized()
        if revoked(worker):
            return unauthorized(f"worker {worker} was reaped; its credential is revoked")
        return Identity(role, worker)

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        roles = {required_role(request.path), required_role(request.raw_path)}
        if roles == {None}:
            return await handler(request)
        if len(roles) > 1:  # the two spellings name different roles (percent-encoding games): no one's
            return unauthorized()
        (role,) = roles
        assert role is not None
        found = authenticate(request, role)
        if isinstance(found, web.Response):
            events = request.app.get(EVENTS)
            if events is not None:
                events.refused("unauthenticated")
            return found
        request[IDENTITY] = found
        return await handler(request)

    return check


def operator_allowed(request: web.Request, secret: str) -> bool:
    """Whether the request carries the operator's credential (for /metrics with metrics_auth)."""
    header = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
    given = header[len(b"Bearer ") :] if header.startswith(b"Bearer ") else b""
    return matches(given, derive(secret, Role.OPERATOR))


def unauthorized(message: str = "authentication required") -> web.Response:
    return error_response(401, message, {"WWW-Authenticate": "Bearer"})


def identity(request: web.Request) -> Identity:
    found: Identity = request[IDENTITY]
    return found
