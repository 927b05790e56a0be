"""The internal API handlers (see server/auth.py for who may call which): workers lease,
heartbeat, complete and release; the peer pulls, confirms, looks up, syncs and reads the
dashboard panel; the operator reads the detailed status. Job bodies travel raw (see common.wire)."""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web

from common.wire import LEASE_CONTENT_TYPE, pack_lease
from server.api import DASHBOARD, HISTORY, SERVICE
from server.auth import identity
from server.errors import BadRequest, NotFound
from server.service import Entry, LeaseGrant
from server.timeline import CURSOR_RE
from server.views import DIGEST_HEX
from server.web import float_param, int_param, json_response, read_json, text_param

MAX_ENTRIES = 100_000
MAX_LEASE_ID = 64


def entries(body: dict[str, Any], key: str, value_key: str | None = None) -> list[Entry]:
    """body[key] as report entries: objects with a work_id and a lease_id (and value_key)."""
    raw = body.get(key, [])
    if not isinstance(raw, list) or len(raw) > MAX_ENTRIES:
        raise BadRequest(f"{key} must be a list of at most {MAX_ENTRIES} entries")
    found = []
    for item in raw:
        ok = (
            isinstance(item, dict)
            and isinstance(item.get("work_id"), str)
            and isinstance(item.get("lease_id"), str)
            and 0 < len(item["lease_id"]) <= MAX_LEASE_ID
            and (value_key is None or isinstance(item.get(value_key), str))
        )
        if not ok:
            what = f", lease_id and {value_key}" if value_key else " and lease_id"
            raise BadRequest(f"each entry of {key} must be an object with string work_id{what}")
        found.append(Entry(item["work_id"], item["lease_id"], item.get(value_key) if value_key else None))
    return found


def digests(results: list[Entry]) -> list[Entry]:
    """Each result's digest as bytes: exactly 128 lower-case hex characters, nothing else."""
    parsed = []
    for entry in results:
        if not DIGEST_HEX.fullmatch(entry.value):
            raise BadRequest("a result must be a 64-byte digest in 128 lower-case hex characters")
        parsed.append(Entry(entry.work_id, entry.lease_id, bytes.fromhex(entry.value)))
    return parsed


class LeaseResponse(web.StreamResponse):
    """A streamed lease answer whose headers go out with the first chunk, in one write (aiohttp's
    own opt-in, which web.Response uses): the jobs are streamed so that a failed write puts them back."""

    _send_headers_immediately = False


async def lease(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    max_jobs = int_param(request, "max", 1, 1_000_000)
    wait_s = float_param(request, "wait", 0.0, service.settings.long_poll_max_s, 0.0)
    response = LeaseResponse(headers={"Content-Type": LEASE_CONTENT_TYPE})

    async def deliver(grant: LeaseGrant) -> None:
        header = {
            "lease_s": grant.lease_s,
            "more": grant.more,
            "jobs": [
                {"work_id": str(j.work_id), "lease_id": j.lease_id, "iterations": j.iterations, "size": len(j.body)}
                for j in grant.jobs
            ],
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
        await service.lease(identity(request).worker, max_jobs, wait_s, deliver)
    return response


async def complete(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    body = await read_json(request)
    results = digests(entries(body, "results", "result"))
    failures = entries(body, "failures", "error")
    return json_response(await service.complete(identity(request).worker, results, failures, body.get("stats")))


async def heartbeat(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    body = await read_json(request)
    return json_response(service.heartbeat(identity(request).worker, entries(body, "leases"), body.get("stats")))


async def release(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    body = await read_json(request)
    return json_response(await service.release(identity(request).worker, entries(body, "leases"), body.get("stats")))


async def peer_pull(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    return json_response(await service.peer_reserve(int_param(request, "top", 1, 1000)))


async def peer_confirm(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    handout = (await read_json(request)).get("handout")
    if not isinstance(handout, str) or not 0 < len(handout) <= 64:
        raise BadRequest("handout must be a hand-out id")
    return json_response(await service.peer_confirm(handout))


async def peer_work(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    wait_s = float_param(request, "wait", 0.0, service.settings.long_poll_max_s, 0.0)
    history = text_param(request, "history", HISTORY, "1 (with the job's history) or 0") == "1"
    try:
        return json_response(await service.own_work(request.match_info["work_id"], wait_s, history=history))
    except NotFound:
        raise NotFound("unknown work id") from None


async def peer_sync(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    body = await read_json(request)
    want, in_use, revoked = body.get("want_borrow", 0), body.get("in_use", 0), body.get("revoked", [])
    if any(not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 1_000_000 for v in (want, in_use)):
        raise BadRequest("want_borrow and in_use must be integers 0..1000000")
    if not isinstance(revoked, list) or len(revoked) > 10_000 or not all(isinstance(w, str) for w in revoked):
        raise BadRequest("revoked must be a list of worker ids")
    return json_response(await service.sync_loans(want, in_use, revoked))


async def peer_dashboard(request: web.Request) -> web.Response:
    cursor = text_param(request, "since", CURSOR_RE, "a cursor from an earlier answer")
    return json_response(request.app[DASHBOARD].own(cursor))


async def operator_status(request: web.Request) -> web.Response:
    return json_response(await request.app[SERVICE].status(detail=True))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/internal/lease", lease)
    app.router.add_post("/internal/complete", complete)
    app.router.add_post("/internal/heartbeat", heartbeat)
    app.router.add_post("/internal/release", release)
    app.router.add_post("/internal/peer/pull", peer_pull)
    app.router.add_post("/internal/peer/confirm", peer_confirm)
    app.router.add_get("/internal/peer/work/{work_id}", peer_work)
    app.router.add_post("/internal/peer/sync", peer_sync)
    app.router.add_get("/internal/peer/dashboard", peer_dashboard)
    app.router.add_get("/internal/status", operator_status)
