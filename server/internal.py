"""The internal API (bearer token): workers lease, heartbeat, complete and release; peers
pull, look up and sync loans. Job bodies travel raw (see worker.protocol)."""
from __future__ import annotations

import asyncio

from aiohttp import web

from server.api import local_work, work_item
from server.ids import parse_id
from server.node import NODE, Node
from server.web_util import ApiError, float_param, int_param, json_response, read_json
from worker.protocol import LEASE_CONTENT_TYPE, WORKER_ID_HEADER, pack_lease

MAX_WORKER_ID = 128


def worker_id(request: web.Request) -> str:
    value = request.headers.get(WORKER_ID_HEADER, "")
    if not 0 < len(value) <= MAX_WORKER_ID or not value.isprintable():
        raise ApiError(400, f"missing or bad {WORKER_ID_HEADER} header")
    return value


def own_seqs(node: Node, work_ids) -> dict[int, str]:
    """seq -> work id for the ids that belong to this server (others are ignored)."""
    if not isinstance(work_ids, list):
        raise ApiError(400, "work_ids must be a list")
    seqs = {}
    for work_id in work_ids:
        parsed = parse_id(work_id) if isinstance(work_id, str) else None
        if parsed is not None and parsed[0] == node.name:
            seqs[parsed[1]] = work_id
    return seqs


async def lease(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    worker = worker_id(request)
    # A worker may ask for more than this server hands out at once; it gets the server's maximum.
    max_jobs = min(int_param(request, "max", 1, 1_000_000), node.settings.lease_batch_max)
    wait_s = float_param(request, "wait", 0.0, node.settings.long_poll_max_s, 0.0)
    node.registry.touch(worker)
    handed = await node.scheduler.lease(worker, max_jobs, wait_s)
    header = {
        "lease_s": node.settings.lease_s,
        "jobs": [{"work_id": f"{node.name}.{job.seq}.{nonce}", "iterations": job.iterations, "size": len(body)}
                 for job, body, nonce in handed],
    }
    chunks = pack_lease(header, [body for _, body, _ in handed])
    response = web.StreamResponse(headers={"Content-Type": LEASE_CONTENT_TYPE})
    response.content_length = sum(len(c) for c in chunks)
    try:
        if request.transport is None or request.transport.is_closing():
            raise ConnectionResetError("worker went away during the long-poll")
        await response.prepare(request)
        for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
    except (ConnectionError, asyncio.CancelledError) as exc:
        # The worker never got these jobs: put them back now instead of when the lease expires.
        if handed:
            await asyncio.shield(node.scheduler.release(worker, [job.seq for job, _, _ in handed]))
        if isinstance(exc, asyncio.CancelledError):
            raise
    return response


async def complete(request: web.Request) -> web.Response:
    node = request.app[NODE]
    worker = worker_id(request)
    body = await read_json(request)
    info = node.registry.touch(worker, body.get("stats"))
    results, failures = [], []
    for entry in body.get("results", []):
        try:
            work_id, digest_hex = entry
            digest = bytes.fromhex(digest_hex)
        except (TypeError, ValueError):
            raise ApiError(400, "results must be [work_id, 128 hex chars] pairs") from None
        if len(digest) != 64:
            raise ApiError(400, "a result must be a 64-byte digest")
        for seq in own_seqs(node, [work_id]):
            results.append((seq, digest))
    for entry in body.get("failures", []):
        try:
            work_id, error = entry
        except (TypeError, ValueError):
            raise ApiError(400, "failures must be [work_id, message] pairs") from None
        for seq in own_seqs(node, [work_id]):
            failures.append((seq, str(error)[:500]))
    accepted = await node.scheduler.complete(info.worker_id, results) if results else 0
    if failures:
        await node.scheduler.fail_attempt(info.worker_id, failures)
    return json_response({"accepted": accepted, "duplicates": len(results) - accepted})


async def heartbeat(request: web.Request) -> web.Response:
    node = request.app[NODE]
    worker = worker_id(request)
    body = await read_json(request)
    node.registry.touch(worker, body.get("stats"))
    held = own_seqs(node, body.get("work_ids", []))
    lost = node.scheduler.heartbeat(worker, list(held))
    return json_response({"lost": [held[seq] for seq in lost], "lease_s": node.settings.lease_s})


async def release(request: web.Request) -> web.Response:
    node = request.app[NODE]
    worker = worker_id(request)
    body = await read_json(request)
    node.registry.touch(worker, body.get("stats"))
    released = await node.scheduler.release(worker, list(own_seqs(node, body.get("work_ids", []))))
    return json_response({"released": released})


async def peer_pull(request: web.Request) -> web.Response:
    node = request.app[NODE]
    top = int_param(request, "top", 1, 1000)
    return json_response([work_item(node, row) for row in await node.store.pull(top)])


async def peer_work(request: web.Request) -> web.Response:
    node = request.app[NODE]
    wait_s = float_param(request, "wait", 0.0, node.settings.long_poll_max_s, 0.0)
    item = await local_work(node, request.match_info["work_id"], wait_s)
    if item is None:
        raise ApiError(404, "unknown work id")
    return json_response(item)


async def peer_sync(request: web.Request) -> web.Response:
    node = request.app[NODE]
    body = await read_json(request)
    want, in_use = body.get("want_borrow", 0), body.get("in_use", 0)
    if not isinstance(want, int) or not isinstance(in_use, int):
        raise ApiError(400, "want_borrow and in_use must be integers")
    granted = node.grant_loan(want, in_use)
    return json_response({"name": node.name, "granted": granted, "queued": len(node.scheduler.queued)})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/internal/lease", lease)
    app.router.add_post("/internal/complete", complete)
    app.router.add_post("/internal/heartbeat", heartbeat)
    app.router.add_post("/internal/release", release)
    app.router.add_post("/internal/peer/pull", peer_pull)
    app.router.add_get("/internal/peer/work/{work_id}", peer_work)
    app.router.add_post("/internal/peer/sync", peer_sync)
