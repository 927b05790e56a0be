"""The aiohttp application and its serving lifecycle (two-phase stop)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from aiohttp import web

from server import api, internal
from server.config import ServerSettings
from server.node import Node
from server.web import auth_middleware, errors_middleware

log = logging.getLogger(__name__)

HEADROOM = 64 << 10  # internal JSON bodies (batches of results) may be a little larger than a job
DRAIN_TIMEOUT_S = 60.0


def build_app(node: Node) -> web.Application:
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware(node.token)],
        client_max_size=node.settings.max_body_bytes + HEADROOM,
    )
    app[api.SERVICE] = node.service
    api.add_routes(app)
    internal.add_routes(app)
    return app


async def serve(settings: ServerSettings, token: str, ready: Callable[[], None] | None = None) -> int:
    """Run until SIGTERM/SIGINT or a dead background loop; returns the exit code."""
    node = Node(settings, token)
    await node.start()
    app = build_app(node)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
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
    try:
        await asyncio.wait_for(node.drain(), DRAIN_TIMEOUT_S)
    except TimeoutError:
        log.warning("workers did not drain within %.0fs", DRAIN_TIMEOUT_S)
    await runner.cleanup()
    await node.close()
    log.info("stopped")
    return 1 if node.fatal else 0
