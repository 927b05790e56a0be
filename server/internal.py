"""The internal API handlers (bearer token): workers lease, heartbeat, complete and release;
peers pull, look up and sync loans. Job bodies travel raw (see common.wire)."""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web

from common.wire import LEASE_CONTENT_TYPE, WORKER_ID_HEADER, pack_lease
from server.api import SERVICE
from server.errors import BadRequest, NotFound
from server.service import LeaseGrant
from server.web import float_param, int_param, json_response, read_json

MAX_WORKER_ID = 128


def worker_id(request: web.Request) -> str:
    value = request.headers.get(WORKER_ID_HEADER, "")
    if not 0 < len(value) <= MAX_WORKER_ID or not value.isprintable():
        raise BadRequest(f"missing or bad {WORKER_ID_HEADER} header")
    return value


def pairs(body: dict[str, Any], key: str, what: str) -> list[tuple[str, str]]:
    """A list of [string, string] pairs from the body (missing: empty)."""
    value = body.get(key, [])
    if not isinstance(value, list) or not all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], str) for p in value
    ):
        raise BadRequest(f"{key} must be a list of [work_id, {what}] pairs")
    return [(p[0], p[1]) for p in value]


def digests(results: list[tuple[str, str]]) -> list[tuple[str, bytes]]:
    parsed = []
    for work_id, digest_hex in results:
        try:
            digest = bytes.fromhex(digest_hex)
        except ValueError:
            digest = b""
        if len(digest) != 64:
            raise BadRequest("a result must be a 64-byte digest in 128 hex characters")
        parsed.append((work_id, digest))
    return parsed


async def lease(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    worker = worker_id(request)
    max_jobs = int_param(request, "max", 1, 1_000_000)
    wait_s = float_param(request, "wait", 0.0, service.settings.long_poll_max_s, 0.0)
    response = web.StreamResponse(headers={"Content-Type": LEASE_CONTENT_TYPE})

    async def deliver(grant: LeaseGrant) -> None:
        header = {
            "lease_s": grant.lease_s,
            "jobs": [{"work_id": str(j.work_id), "iterations": j.iterations, "size": len(j.body)} for j in grant.jobs],
        }
        chunks = pack_lease(header, [j.body for j in grant.jobs])
        response.content_length = sum(len(c) for c in chunks)
        if request.transport is None or request.transport.is_closing():
            raise ConnectionResetError("worker went away during the long-poll")
        await response.prepare(request)
        for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()

    with contextlib.suppress(ConnectionError):  # the jobs went back to the queue; nobody is left to answer
        await service.lease(worker, max_jobs, wait_s, deliver)
    return response


async def complete(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    worker = worker_id(request)
    body = await read_json(request)
    results = digests(pairs(body, "results", "128 hex chars"))
    failures = pairs(body, "failures", "message")
    return json_response(await service.complete(worker, results, failures, body.get("stats")))


async def heartbeat(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    worker = worker_id(request)
    body = await read_json(request)
    return json_response(service.heartbeat(worker, body.get("work_ids", []), body.get("stats")))


async def release(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    worker = worker_id(request)
    body = await read_json(request)
    return json_response(await service.release(worker, body.get("work_ids", []), body.get("stats")))


async def peer_pull(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    return json_response(await service.peer_pull(int_param(request, "top", 1, 1000)))


async def peer_work(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    wait_s = float_param(request, "wait", 0.0, service.settings.long_poll_max_s, 0.0)
    try:
        return json_response(await service.peer_work(request.match_info["work_id"], wait_s))
    except NotFound:
        raise NotFound("unknown work id") from None


async def peer_sync(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    body = await read_json(request)
    want, in_use = body.get("want_borrow", 0), body.get("in_use", 0)
    if not isinstance(want, int) or not isinstance(in_use, int) or isinstance(want, bool) or isinstance(in_use, bool):
        raise BadRequest("want_borrow and in_use must be integers")
    return json_response(service.sync_loans(want, in_use))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/internal/lease", lease)
    app.router.add_post("/internal/complete", complete)
    app.router.add_post("/internal/heartbeat", heartbeat)
    app.router.add_post("/internal/release", release)
    app.router.add_post("/internal/peer/pull", peer_pull)
    app.router.add_get("/internal/peer/work/{work_id}", peer_work)
    app.router.add_post("/internal/peer/sync", peer_sync)
