"""HTTP plumbing shared by the handlers: strict parameters, JSON answers, errors, authentication."""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from server.errors import BadRequest, ServiceError, TooLarge
from server.store import StoreError

log = logging.getLogger(__name__)

_DECIMAL = re.compile(r"[0-9]{1,19}")
_NUMBER = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")
INTERNAL_PREFIX = "internal"
READ_CHUNK = 1 << 16

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=dumps(value), status=status, content_type="application/json", headers=headers)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return json_response({"error": message}, status=status, headers=headers)


def _one(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise BadRequest(f"query parameter {name!r} given more than once")
    return values[0] if values else None


def int_param(request: web.Request, name: str, low: int, high: int, *, default: int | None = None) -> int:
    """A plain decimal integer query parameter within [low, high]; anything else is a 400."""
    text = _one(request, name)
    if text is None:
        if default is not None:
            return default
        raise BadRequest(f"missing query parameter {name!r} (an integer {low}..{high})")
    if not _DECIMAL.fullmatch(text) or not low <= int(text) <= high:
        raise BadRequest(f"query parameter {name!r} must be a plain decimal integer {low}..{high}, got {text[:40]!r}")
    return int(text)


def float_param(request: web.Request, name: str, low: float, high: float, default: float) -> float:
    """A plain decimal number query parameter within [low, high] (no exponent, sign, nan or inf)."""
    text = _one(request, name)
    if text is None:
        return default
    value = float(text) if _NUMBER.fullmatch(text) else math.nan
    if not low <= value <= high:  # also rejects nan
        raise BadRequest(f"query parameter {name!r} must be a number {low:g}..{high:g}")
    return value


async def read_json(request: web.Request) -> dict[str, Any]:
    try:
        value = await request.json(loads=lambda text: json.loads(text, parse_constant=_no_constant))
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("body is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("body must be a JSON object")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class RequestUpload:
    """A request body as the service reads it: announced length first, then at most `limit` bytes."""

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self.content_length = request.content_length

    async def read(self, limit: int) -> bytes:
        chunks, size = [], 0
        while chunk := await self._request.content.read(READ_CHUNK):
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error is JSON; client mistakes are 4xx, storage trouble 503, never a bare 500."""
    try:
        return await handler(request)
    except ServiceError as exc:
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
        return error_response(exc.status, exc.message, headers)
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


def auth_middleware(token: str) -> Middleware:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Both spellings of the path, so percent-encoding cannot slip past the prefix check.
        if any(p.lstrip("/").lower().startswith(INTERNAL_PREFIX) for p in (request.path, request.raw_path)):
            given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            if not hmac.compare_digest(given, expected):
                return error_response(401, "authentication required", {"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return check
