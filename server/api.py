"""The public API: enqueue, pullCompleted, work status, health and status."""
from __future__ import annotations

from aiohttp import web

from server.ids import format_id, parse_id
from server.node import NODE, Node
from server.peer import PeerUnavailable
from server.store import JobRow
from server.web_util import ApiError, float_param, int_param, json_response

READ_CHUNK = 1 << 16


def work_item(node: Node, row: JobRow) -> dict:
    """A finished job as pullCompleted hands it out."""
    item = {"work_id": format_id(node.name, row.seq, row.nonce), "result": row.result.hex() if row.result else None,
            "iterations": row.iterations, "completed_at": row.completed_at}
    if row.error is not None:
        item["error"] = row.error
    return item


def work_status(node: Node, row: JobRow) -> dict:
    return {"work_id": format_id(node.name, row.seq, row.nonce), **node.scheduler.describe(row)}


def check_length(request: web.Request, limit: int) -> None:
    """Refuse an announced oversized body before reading any of it."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"body of {request.content_length} bytes exceeds the limit of {limit} bytes")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, refusing more than `limit` bytes even without a Content-Length."""
    chunks, size = [], 0
    while chunk := await request.content.read(READ_CHUNK):
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def enqueue(request: web.Request) -> web.Response:
    node = request.app[NODE]
    settings = node.settings
    iterations = int_param(request, "iterations", 1, settings.max_iterations)
    check_length(request, settings.max_body_bytes)
    if len(node.scheduler.queued) >= settings.max_queued:
        raise ApiError(503, f"queue is full ({settings.max_queued} jobs waiting); retry later", {"Retry-After": "2"})
    if node.closing:
        raise ApiError(503, "server is shutting down; use the other server", {"Retry-After": "1"})
    body = await read_body(request, settings.max_body_bytes)
    seq, nonce = await node.scheduler.enqueue(body, iterations)
    return json_response({"work_id": format_id(node.name, seq, nonce)})


async def pull_completed(request: web.Request) -> web.Response:
    node = request.app[NODE]
    top = int_param(request, "top", 1, 1000)
    items = [work_item(node, row) for row in await node.store.pull(top)]
    if len(items) < top and node.peer is not None:
        try:
            items += await node.peer.pull(top - len(items))
        except PeerUnavailable:
            pass  # a peer that is down is skipped: its results wait for it
    items.sort(key=lambda item: item["completed_at"] or 0.0, reverse=True)
    return json_response(items)


async def local_work(node: Node, work_id: str, wait_s: float) -> dict | None:
    parsed = parse_id(work_id)
    if parsed is None or parsed[0] != node.name:
        return None
    _, seq, nonce = parsed
    if wait_s > 0:
        await node.scheduler.wait_finished(seq, wait_s)
    row = node.store.get(seq)
    if row is None or row.nonce != nonce:
        return None
    return work_status(node, row)


async def get_work(request: web.Request) -> web.Response:
    node = request.app[NODE]
    work_id = request.match_info["work_id"]
    wait_s = float_param(request, "wait", 0.0, node.settings.long_poll_max_s, 0.0)
    parsed = parse_id(work_id)
    if parsed is None:
        raise ApiError(404, f"unknown work id {work_id[:80]!r}")
    if parsed[0] == node.name:
        item = await local_work(node, work_id, wait_s)
    elif node.peer is None:
        item = None
    else:
        try:
            item = await node.peer.get_work(work_id, wait_s)
        except PeerUnavailable:
            raise ApiError(503, f"the server owning {work_id} is unreachable; retry later",
                           {"Retry-After": "5"}) from None
    if item is None:
        raise ApiError(404, f"unknown work id {work_id[:80]!r}")
    return json_response(item)


async def healthz(request: web.Request) -> web.Response:
    node = request.app[NODE]
    if node.closing:
        raise ApiError(503, "shutting down")
    return json_response({"ok": True, "server": node.name})


async def status(request: web.Request) -> web.Response:
    return json_response(await request.app[NODE].status())


def add_routes(app: web.Application) -> None:
    app.router.add_put("/enqueue", enqueue)
    app.router.add_post("/pullCompleted", pull_completed)
    app.router.add_get("/work/{work_id}", get_work)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/status", status)
