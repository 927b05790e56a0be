"""The public API handlers: enqueue, pullCompleted, work status, health and status."""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web

from server import openapi
from server.service import Service
from server.web import RequestUpload, dumps, float_param, int_param, json_response

SERVICE = web.AppKey("service", Service)


async def enqueue(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    iterations = int_param(request, "iterations", 1, service.settings.max_iterations)
    work_id = await service.enqueue(iterations, RequestUpload(request))
    return json_response({"work_id": str(work_id)})


async def pull_completed(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    top = int_param(request, "top", 1, 1000)
    response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})

    async def respond(items: list[dict[str, Any]]) -> None:
        body = dumps(items).encode()
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body)
        await response.write_eof()

    with contextlib.suppress(ConnectionError):  # the client left: its results are pullable again
        await service.pull_completed(top, respond)
    return response


async def get_work(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    wait_s = float_param(request, "wait", 0.0, service.settings.long_poll_max_s, 0.0)
    return json_response(await service.work(request.match_info["work_id"], wait_s))


async def healthz(request: web.Request) -> web.Response:
    return json_response(request.app[SERVICE].health_report())


async def status(request: web.Request) -> web.Response:
    return json_response(await request.app[SERVICE].status(detail=False))


def add_routes(app: web.Application) -> None:
    app.router.add_put("/enqueue", enqueue)
    app.router.add_post("/pullCompleted", pull_completed)
    app.router.add_get("/work/{work_id}", get_work)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/status", status)
    app.router.add_get("/openapi.json", openapi.serve)
