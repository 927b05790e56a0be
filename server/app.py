"""The aiohttp application and its serving lifecycle (two-phase stop), within the connection and
request-read bounds of server/limits.py and server/web.py."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from aiohttp import web

from common.malloc import keep_freed_body_memory
from server import api, internal
from server.auth import auth_middleware
from server.config import ServerSettings
from server.limits import CONNECTIONS, GuardedAppRunner, limits_middleware, raise_fd_limit
from server.node import Node
from server.web import BODY_LIMITS, EVENTS, BodyLimits, errors_middleware

log = logging.getLogger(__name__)

HEADROOM = 64 << 10  # internal JSON bodies (batches of results) may be a little larger than a job
DRAIN_MARGIN_S = 15.0  # beyond the workers' drain timeout, for the launcher to see them go


def build_app(node: Node) -> web.Application:
    settings = node.settings
    app = web.Application(
        middlewares=[limits_middleware, errors_middleware, auth_middleware(node.secret, node.revocations.__contains__)],
        client_max_size=settings.max_body_bytes + HEADROOM,
    )
    app[api.SERVICE] = node.service
    app[EVENTS] = node.events
    app[api.SECRET] = node.secret
    if node.metrics is not None:
        app[api.METRICS] = node.metrics
    app[api.DASHBOARD] = node.dashboard
    app[BODY_LIMITS] = BodyLimits(
        read_timeout_s=settings.body_timeout_s,
        min_bytes_per_s=settings.body_min_bytes_per_s,
        json_max_bytes=settings.max_body_bytes + HEADROOM,
    )
    app[CONNECTIONS] = node.connections
    api.add_routes(app)
    internal.add_routes(app)
    return app


async def serve(settings: ServerSettings, token: str, ready: Callable[[], None] | None = None) -> int:
    """Run until SIGTERM/SIGINT or a dead background loop; returns the exit code."""
    node = Node(settings, token)
    await node.start()
    app = build_app(node)
    raise_fd_limit(settings.max_connections)
    keep_freed_body_memory()
    runner = GuardedAppRunner(
        app, app[CONNECTIONS], handle_signals=False, access_log=None, keepalive_timeout=settings.keepalive_s
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc)
        await runner.cleanup()
        await node.close()
        return 1
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node.stopped.set)
    log.info(
        "server %s listening on %s:%d (public %s, peer %s, launcher %s)",
        node.name,
        settings.host,
        settings.port,
        settings.url,
        settings.peer or "none",
        settings.launcher,
    )
    if ready is not None:
        ready()
    await node.stopped.wait()
    log.info("stopping: no new launches, draining local workers")
    drain_s = settings.worker_drain_timeout_s + DRAIN_MARGIN_S
    try:
        await asyncio.wait_for(node.drain(), drain_s)
    except TimeoutError:
        log.warning("workers did not drain within %.0fs", drain_s)
    await runner.cleanup()
    await node.close()
    log.info("stopped")
    return 0
