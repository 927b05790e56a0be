"""The public API handlers: enqueue, pullCompleted, work status, health and status, the dashboard."""

from __future__ import annotations

import contextlib
import re
from typing import Any

from aiohttp import web

from server import openapi
from server.auth import operator_allowed, unauthorized
from server.dashboard import Dashboard, asset
from server.errors import NotFound
from server.jobs import State
from server.metrics import CONTENT_TYPE, Metrics
from server.service import Service
from server.timeline import CURSOR_RE
from server.web import RequestUpload, dumps, float_param, int_param, json_response, text_param

SERVICE = web.AppKey("service", Service)
METRICS = web.AppKey("metrics", Metrics)  # absent when metrics are off
SECRET = web.AppKey("secret", str)
DASHBOARD = web.AppKey("dashboard", Dashboard)

#: the page and its assets come from this server only; the page may only poll this server
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
        " base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


async def enqueue(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    iterations = int_param(request, "iterations", 1, service.settings.max_iterations)
    accepted = await service.enqueue(iterations, RequestUpload(request))
    if accepted.result is None:
        return json_response({"work_id": str(accepted.work_id), "status": State.QUEUED.label})
    # Hashed on arrival: the result now saves the client a GET /work (pullCompleted still hands it out).
    answer = {"work_id": str(accepted.work_id), "status": State.COMPLETED.label, "result": accepted.result.hex()}
    return json_response(answer)


async def pull_completed(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    top = int_param(request, "top", 1, 1000)
    response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})

    async def respond(items: list[dict[str, Any]]) -> None:
        body = dumps(items)
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body)
        await response.write_eof()

    with contextlib.suppress(ConnectionError):  # the client left: its results are pullable again
        await service.pull_completed(top, respond)
    return response


HISTORY = re.compile(r"[01]")


async def get_work(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    wait_s = float_param(request, "wait", 0.0, service.settings.long_poll_max_s, 0.0)
    history = text_param(request, "history", HISTORY, "1 (with the job's history) or 0") == "1"
    return json_response(await service.work(request.match_info["work_id"], wait_s, history=history))


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics (server/metrics.py); the operator's credential when metrics_auth is set."""
    service = request.app[SERVICE]
    found = request.app.get(METRICS)
    if found is None:
        raise NotFound("metrics are off on this server (--no-metrics)")
    if service.settings.metrics_auth and not operator_allowed(request, request.app[SECRET]):
        return unauthorized()
    return web.Response(body=found.exposition(), headers={"Content-Type": CONTENT_TYPE})


async def healthz(request: web.Request) -> web.Response:
    return json_response(request.app[SERVICE].health_report())


async def status(request: web.Request) -> web.Response:
    return json_response(await request.app[SERVICE].status(detail=False))


async def dashboard_page(request: web.Request) -> web.Response:
    return await dashboard_asset(request, "dashboard.html")


async def dashboard_asset(request: web.Request, name: str | None = None) -> web.Response:
    found = asset(name or request.match_info["name"])
    if found is None:
        raise NotFound("no such asset")
    return web.Response(body=found.body, content_type=found.content_type, charset="utf-8", headers=PAGE_HEADERS)


async def dashboard_data(request: web.Request) -> web.Response:
    cursor = text_param(request, "since", CURSOR_RE, "a cursor from an earlier answer")
    peer_cursor = text_param(request, "peer_since", CURSOR_RE, "a cursor from an earlier answer")
    data = await request.app[DASHBOARD].data(cursor, peer_cursor)
    return json_response(data, headers={"Cache-Control": "no-store"})


def add_routes(app: web.Application) -> None:
    app.router.add_put("/enqueue", enqueue)
    app.router.add_post("/pullCompleted", pull_completed)
    app.router.add_get("/work/{work_id}", get_work)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    app.router.add_get("/openapi.json", openapi.serve)
    app.router.add_get("/", dashboard_page)
    app.router.add_get("/dashboard", dashboard_page)
    app.router.add_get("/dashboard/assets/{name}", dashboard_asset)
    app.router.add_get("/dashboard/data", dashboard_data)
