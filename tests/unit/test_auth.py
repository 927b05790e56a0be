"""server.auth: the middleware in a real aiohttp app on a loopback port, with a trivial handler
that answers who it was called by. Requests go out as raw bytes, so any header can be sent."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from common.credentials import Role, derive
from server.auth import IDENTITY, auth_middleware, required_role
from tests.unit.support import aio

SECRET = "cluster-secret-0123456789abcdef"
WORKER = derive(SECRET, Role.WORKER, "w1")
PEER = derive(SECRET, Role.PEER)
OPERATOR = derive(SECRET, Role.OPERATOR)
REVOKED = {"w-reaped"}


async def whoami(request: web.Request) -> web.Response:
    identity = request.get(IDENTITY)
    role = identity.role.value if identity else "public"
    return web.json_response({"role": role, "worker": identity.worker if identity else ""})


@contextlib.asynccontextmanager
async def serving(*routes: str):
    """The middleware before `whoami`, on these exact GET routes (default: every path)."""
    app = web.Application(middlewares=[auth_middleware(SECRET, REVOKED.__contains__)])
    for route in routes or ("/{tail:.*}",):
        app.router.add_get(route, whoami)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield server.port
    finally:
        await server.close()


async def call(port: int, path: str, *, auth: bytes | str | None = None, worker: str | None = None):
    """(status, JSON body) of a raw GET: header values go out exactly as given."""
    lines = [f"GET {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    if auth is not None:
        lines.append(b"Authorization: " + (auth if isinstance(auth, bytes) else f"Bearer {auth}".encode()))
    if worker is not None:
        lines.append(b"X-Worker-Id: " + worker.encode())
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body) if body else None


WORKER_PATHS = ("/internal/lease", "/internal/complete", "/internal/heartbeat", "/internal/release")
PEER_PATHS = ("/internal/peer/sync", "/internal/peer/pull", "/internal/peer/work/a.1.abcdef")
OPERATOR_PATHS = ("/internal/status",)


@aio
async def test_each_roles_credential_opens_only_its_paths():
    callers = {
        "worker": {"auth": WORKER, "worker": "w1"},
        "peer": {"auth": PEER},
        "operator": {"auth": OPERATOR},
        # a credential of another role, with a worker id: still not a worker's
        "peer as worker": {"auth": PEER, "worker": "w1"},
        "operator as worker": {"auth": OPERATOR, "worker": "w1"},
    }
    opens = {"worker": WORKER_PATHS, "peer": PEER_PATHS, "operator": OPERATOR_PATHS}
    opens |= {"peer as worker": PEER_PATHS, "operator as worker": OPERATOR_PATHS}
    async with serving() as port:
        for who, headers in callers.items():
            for path in WORKER_PATHS + PEER_PATHS + OPERATOR_PATHS:
                status, body = await call(port, path, **headers)
                if path in opens.get(who, ()):
                    assert (status, body["role"]) == (200, who.split()[0]), (who, path)
                else:  # 400: a credential without a worker id on a worker path
                    assert status in (400, 401), (who, path, status)
        status, body = await call(port, "/internal/lease", auth=WORKER, worker="w1")
        assert body == {"role": "worker", "worker": "w1"}
        assert (await call(port, "/status"))[1] == {"role": "public", "worker": ""}  # public: no credential


@aio
async def test_the_raw_secret_and_missing_or_malformed_credentials_are_refused():
    async with serving() as port:
        for path in (*WORKER_PATHS, *PEER_PATHS, *OPERATOR_PATHS):
            assert (await call(port, path, auth=SECRET, worker="w1"))[0] == 401
            assert (await call(port, path))[0] == 401
            assert (await call(port, path, auth=b"Basic " + PEER.encode(), worker="w1"))[0] == 401
            assert (await call(port, path, auth=b"Bearer" + PEER.encode(), worker="w1"))[0] == 401
            assert (await call(port, path, auth=b"Bearer \xff\xfe\x80", worker="w1"))[0] == 401  # not UTF-8


@aio
async def test_a_worker_credential_is_good_for_its_own_id_only_until_revoked():
    async with serving() as port:
        assert (await call(port, "/internal/lease", auth=WORKER, worker="w2"))[0] == 401
        status, body = await call(port, "/internal/lease", auth=WORKER)  # a credential, but whose?
        assert status == 400 and "X-Worker-Id" in body["error"]
        reaped = derive(SECRET, Role.WORKER, "w-reaped")
        status, body = await call(port, "/internal/lease", auth=reaped, worker="w-reaped")
        assert status == 401 and "revoked" in body["error"]
        long_id = "w" * 129
        assert (await call(port, "/internal/lease", auth=derive(SECRET, Role.WORKER, long_id), worker=long_id))[0] in (
            400,
            401,
        )


@pytest.mark.parametrize(
    "path",
    [
        "/%69nternal/lease",
        "/internal%2Flease",
        "/%49NTERNAL/lease",
        "/INTERNAL/lease",
        "//internal/lease",
        "/%69nternal/peer/sync",
        "/internal/%70eer/sync",
        "/internal/status/",
        "/internal/%73tatus",
    ],
)
@aio
async def test_other_spellings_of_internal_paths_are_protected(path):
    async with serving() as port:
        assert (await call(port, path))[0] == 401


@pytest.mark.parametrize("path", ["/%69nternal/peer/sync", "/%69nternal/status", "/INTERNAL/PEER/sync"])
@aio
async def test_a_worker_credential_does_not_open_peer_or_operator_paths_by_spelling(path):
    async with serving() as port:
        assert (await call(port, path, auth=WORKER, worker="w1"))[0] == 401


@pytest.mark.parametrize("path", ["/internal/%70eer/sync", "/internal/%70eer/pull", "/internal/%73tatus"])
@aio
async def test_a_worker_credential_does_not_open_peer_or_operator_paths_by_percent_encoding(path):
    async with serving("/internal/peer/sync", "/internal/peer/pull", "/internal/status") as port:
        assert (await call(port, path, auth=WORKER, worker="w1"))[0] == 401  # today: 200 from the peer route


def test_required_role_by_path():
    assert required_role("/internal/lease") is Role.WORKER
    assert required_role("/internal/anything-else") is Role.WORKER  # unknown internal paths: workers at most
    assert required_role("/internal/peer/sync") is Role.PEER
    assert required_role("/internal/status") is Role.OPERATOR
    assert required_role("/status") is None and required_role("/work/a.1.abcdef") is None
    assert required_role("/internalx") is None
