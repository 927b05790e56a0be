"""HTTP plumbing shared by the handlers: strict parameters, JSON answers, errors, authentication."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from server.errors import BadRequest, ServiceError, TooLarge
from server.events import Events
from server.store import StoreError

log = logging.getLogger(__name__)

_DECIMAL = re.compile(r"[0-9]{1,19}")
_NUMBER = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
EVENTS = web.AppKey("events", Events)  # told of every refusal (metrics), when the app has them


def dumps(value: Any) -> bytes:
    """Compact, strict JSON (a NaN or an infinity would become null, never a bare token)."""
    return orjson.dumps(value)


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=dumps(value), status=status, content_type="application/json", charset="utf-8", headers=headers
    )


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


def text_param(request: web.Request, name: str, pattern: re.Pattern[str], what: str) -> str | None:
    """An optional query parameter that must match `pattern` whole (`what` says what it is)."""
    text = _one(request, name)
    if text is not None and not pattern.fullmatch(text):
        raise BadRequest(f"query parameter {name!r} must be {what}, got {text[:40]!r}")
    return text


async def read_json(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object (UTF-8, no NaN or Infinity), read within the body limits."""
    limit = body_limits(request).json_max_bytes
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"body of {request.content_length} bytes exceeds the limit of {limit} bytes")
    try:
        value = orjson.loads(await read_body(request, limit))  # refuses NaN and Infinity as not JSON
    except ValueError:  # orjson.JSONDecodeError and a body that is not UTF-8
        raise BadRequest("body is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("body must be a JSON object")
    return value


class RequestTimeout(ServiceError):
    """The request body stopped arriving, or arrived slower than the minimum rate."""

    status = 408
    reason = "body_timeout"


@dataclasses.dataclass(frozen=True)
class BodyLimits:
    """How long a request body may take to arrive.

    Each read waits at most `read_timeout_s` for more bytes, and the body as a whole must keep up
    `min_bytes_per_s` after a grace of `read_timeout_s`: t seconds after the handler starts
    reading, at least (t - read_timeout_s) * min_bytes_per_s bytes must have come (0: no rate).
    A body that falls behind is a RequestTimeout (408), and the connection is closed after the
    answer (server.limits), so nothing of it is stored. `json_max_bytes` bounds internal JSON bodies.
    """

    read_timeout_s: float = 10.0
    min_bytes_per_s: float = 8192.0
    json_max_bytes: int = (1 << 20) + (64 << 10)


BODY_LIMITS = web.AppKey("body_limits", BodyLimits)
BODY_TIMED_OUT = web.RequestKey("body_timed_out", bool)  # set on a RequestTimeout: close after the 408


def body_limits(request: web.Request) -> BodyLimits:
    return request.app.get(BODY_LIMITS) or BodyLimits()


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, joined (see read_pieces)."""
    return b"".join(await read_pieces(request, limit))


async def read_pieces(request: web.Request, limit: int) -> list[bytes]:
    """The whole body, in the pieces it arrived in (joining a 256 KB body would copy it once more
    than hashing it needs): TooLarge past `limit` bytes, RequestTimeout when it comes too slowly
    (see BodyLimits), BadRequest when it is malformed (a broken chunked encoding) or cut short."""
    limits = body_limits(request)
    loop = asyncio.get_running_loop()
    started = loop.time()
    pieces: list[bytes] = []
    size = 0
    content = request.content
    while True:
        if content.is_eof() and content.total_bytes == size:  # all of it read (an empty body's
            return pieces  # reader is shared, and answers every later readchunk with a chunk end)
        try:
            if content.total_bytes > size:  # a piece has arrived: no timer needed
                piece, chunk_end = await content.readchunk()
            else:
                wait_s = limits.read_timeout_s
                if limits.min_bytes_per_s > 0:
                    wait_s = min(wait_s, started + limits.read_timeout_s + size / limits.min_bytes_per_s - loop.time())
                if wait_s <= 0:
                    raise TimeoutError
                async with asyncio.timeout(wait_s):
                    piece, chunk_end = await content.readchunk()
        except TimeoutError:
            request[BODY_TIMED_OUT] = True
            raise RequestTimeout(
                f"request body too slow: {size} bytes in {loop.time() - started:.1f}s"
                f" (each read within {limits.read_timeout_s:g}s, then {limits.min_bytes_per_s:g} bytes/s)"
            ) from None
        except (web.RequestPayloadError, ConnectionError) as exc:  # the client broke off or garbled it
            raise BadRequest(f"request body unreadable: {type(exc).__name__}") from None
        if not piece:
            if chunk_end:  # the end of a chunk of a chunked body, not of the body
                continue
            return pieces
        size += len(piece)
        if size > limit:
            raise TooLarge(f"body exceeds the limit of {limit} bytes")
        pieces.append(piece)


class RequestUpload:
    """A request body as the service reads it: announced length first, then at most `limit` bytes,
    in the pieces they came in, within the body limits (read_pieces)."""

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self.content_length = request.content_length

    async def read(self, limit: int) -> list[bytes]:
        return await read_pieces(self._request, limit)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error is JSON; client mistakes are 4xx, storage trouble 503, never a bare 500."""
    events = request.app.get(EVENTS)
    try:
        return await handler(request)
    except ServiceError as exc:
        if events is not None:
            events.refused(exc.reason)
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
        return json_response({"error": exc.message, **exc.details}, status=exc.status, headers=headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if events is not None:
            events.refused("not_found" if exc.status == 404 else "bad_request" if exc.status < 500 else "other")
        keep = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after", "www-authenticate")}
        return error_response(exc.status, exc.reason or "error", keep)
    except StoreError as exc:
        if events is not None:
            events.refused("storage")
        log.error("storage error on %s %s: %s", request.method, request.path, exc)
        return error_response(503, f"storage unavailable: {exc}", {"Retry-After": "5"})
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(500, "internal error")
