"""HTTP plumbing shared by the handlers: JSON errors, strict parameters, authentication."""
from __future__ import annotations

import hmac
import json
import logging
import re
from typing import Awaitable, Callable

from aiohttp import web

from server.store import StoreError

log = logging.getLogger(__name__)

_DECIMAL = re.compile(r"^[0-9]{1,19}$")
INTERNAL_PREFIX = "internal"


class ApiError(Exception):
    """An error answered as JSON `{"error": message}` with this status."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def dumps(value) -> str:
    return json.dumps(value, separators=(",", ":"))


def json_response(value, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=dumps(value), status=status, content_type="application/json", headers=headers)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return json_response({"error": message}, status=status, headers=headers)


def int_param(request: web.Request, name: str, low: int, high: int, *, default: int | None = None) -> int:
    """A plain decimal integer query parameter within [low, high]; anything else is a 400."""
    values = request.query.getall(name, [])
    if not values:
        if default is not None:
            return default
        raise ApiError(400, f"missing query parameter {name!r} (an integer {low}..{high})")
    if len(values) > 1:
        raise ApiError(400, f"query parameter {name!r} given more than once")
    text = values[0]
    if not _DECIMAL.match(text) or not low <= int(text) <= high:
        raise ApiError(400, f"query parameter {name!r} must be a plain decimal integer {low}..{high}, got {text[:40]!r}")
    return int(text)


def float_param(request: web.Request, name: str, low: float, high: float, default: float) -> float:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # also rejects nan and inf
        raise ApiError(400, f"query parameter {name!r} must be a number {low:g}..{high:g}")
    return value


async def read_json(request: web.Request) -> dict:
    try:
        value = await request.json(loads=json.loads)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "body is not valid JSON") from None
    if not isinstance(value, dict):
        raise ApiError(400, "body must be a JSON object")
    return value


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error is JSON; client mistakes are 4xx, storage trouble 503, never a bare 500."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        keep = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after", "www-authenticate")}
        return error_response(exc.status, exc.reason or "error", keep)
    except StoreError as exc:
        log.error("storage error on %s %s: %s", request.method, request.path, exc)
        return error_response(503, f"storage unavailable: {exc}", {"Retry-After": "5"})
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(500, "internal error")


def auth_middleware(token: str):
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Both spellings of the path, so percent-encoding cannot slip past the prefix check.
        if any(p.lstrip("/").lower().startswith(INTERNAL_PREFIX) for p in (request.path, request.raw_path)):
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return error_response(401, "authentication required", {"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return check
