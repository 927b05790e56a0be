"""The one HTTP client layer of dynwork: peer client, worker client, CLI and load generator.

Every answer is sorted into one outcome, and one retry policy follows from it:

====================================  ===============  ===========================================
what happened                         raised           retried / failed over?
====================================  ===============  ===========================================
2xx                                   (returned)       -
404                                   ``NotFound``     never: the answer
401, 403                              ``Unauthorized`` never: fatal, the credentials are wrong
other 4xx but 408 and 429             ``Refused``      never: the request itself is wrong
429, 503                              ``Unavailable``  yes, ``not_done=True``: the server refused
                                                       before doing anything (honours Retry-After)
408, other 5xx                        ``Unavailable``  only an idempotent call: it may have run
no connection could be made           ``Unavailable``  yes, ``not_done=True``: nothing was sent
timeout, reset, unreadable answer     ``Unavailable``  only an idempotent call: it may have run
====================================  ===============  ===========================================

A call that is not idempotent (enqueue, pullCompleted, lease) is therefore repeated, on the same
server or another one, only when the failure proves the server did nothing; after a lost answer
the caller is told so instead of risking doing it twice (saq's rule). Retries back off
exponentially with full jitter, never sooner than a Retry-After the server asked for.

`HttpClient` makes one call to one server (plus `retries` extra attempts where the table allows);
`Failover` tries servers in turn by the same rule. `expect_json` makes a 2xx body that is not JSON
count as an unreadable answer, so a read moves on from it.

Every error says where (``url``), what the server answered (``status``, None when nothing came
back) and why in a few words (``reason``: "connection refused", "HTTP 413: body too large"); its
message is "<server> <METHOD> <path>: <reason>".
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import aiohttp
import orjson
from yarl import URL

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0
RETRY_AFTER_MAX_S = 30.0
NOT_DONE_STATUSES = frozenset({429, 503})


class HttpError(Exception):
    """A call that did not get a usable 2xx answer: `url` says which server, `status` what it
    answered (None: nothing), `reason` why in a few words (the message without the where)."""

    def __init__(
        self, message: str, *, url: str = "", status: int | None = None, reason: str | None = None, body: bytes = b""
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.reason = message if reason is None else reason
        self.body = body  # the answer's body, when there was one (a 409 lists what it refused)


class Refused(HttpError):
    """The server answered 4xx: the request itself is wrong, repeating it cannot help."""


class NotFound(Refused):
    """404: no such work id or path."""


class Unauthorized(Refused):
    """401/403: the credentials are missing or wrong (a configuration error, not a transient one)."""


class Unavailable(HttpError):
    """No usable answer: down, overloaded, timing out, 5xx or garbage. `not_done` is True when the
    failure proves the server did nothing (no connection, or 429/503), so any call may be repeated."""

    def __init__(
        self,
        message: str,
        *,
        url: str = "",
        status: int | None = None,
        reason: str | None = None,
        not_done: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, url=url, status=status, reason=reason)
        self.not_done = not_done
        self.retry_after_s = retry_after_s

    @property
    def unreachable(self) -> bool:
        """No connection could be made: nothing was sent (as opposed to a 429/503 answer)."""
        return self.not_done and self.status is None


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]  # look names up in lower case
    body: bytes
    url: str = ""

    def json(self) -> Any:
        """The body as strict JSON (no NaN/Infinity); a body that is not raises Unavailable."""
        try:
            return orjson.loads(self.body)  # strict: NaN and Infinity are not JSON
        except (ValueError, UnicodeDecodeError):
            reason = f"HTTP {self.status} answer is not JSON"
            raise Unavailable(f"{self.url}: {reason}", url=self.url, status=self.status, reason=reason) from None

    def json_object(self) -> dict[str, Any]:
        value = self.json()
        if not isinstance(value, dict):
            reason = "answer is not a JSON object"
            raise Unavailable(f"{self.url}: {reason}", url=self.url, status=self.status, reason=reason)
        return value


def error_message(body: bytes) -> str:
    """The `error` of a JSON error body, else the start of the body as text."""
    try:
        value = orjson.loads(body)
        if isinstance(value, dict) and "error" in value:
            return str(value["error"])
    except (ValueError, UnicodeDecodeError):
        pass
    return body[:200].decode("utf-8", "replace").strip() or "(empty body)"


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from a Retry-After header (delta-seconds form), capped; None when absent or odd."""
    raw = headers.get("retry-after")
    try:
        return min(max(float(raw), 0.0), RETRY_AFTER_MAX_S) if raw else None
    except ValueError:
        return None


def describe_exception(exc: BaseException) -> str:
    """A short human reason for a failed transport."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return describe_exception(exc.os_error) if exc.os_error else f"cannot connect ({exc})"
    if isinstance(exc, aiohttp.ServerDisconnectedError | ConnectionResetError):
        return "server disconnected"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def check(answer: Answer, what: str) -> Answer:
    """The answer when it is 2xx; otherwise the exception the table above names."""
    status = answer.status
    if 200 <= status < 300:
        return answer
    reason = f"HTTP {status}: {error_message(answer.body)}"
    message = f"{what}: {reason}"
    if status == 404:
        raise NotFound(message, url=answer.url, status=status, reason=reason, body=answer.body)
    if status in (401, 403):
        raise Unauthorized(message, url=answer.url, status=status, reason=reason, body=answer.body)
    if 400 <= status < 500 and status not in (408, 429):
        raise Refused(message, url=answer.url, status=status, reason=reason, body=answer.body)
    not_done = status in NOT_DONE_STATUSES
    raise Unavailable(
        message,
        url=answer.url,
        status=status,
        reason=reason,
        not_done=not_done,
        retry_after_s=retry_after(answer.headers) if not_done else None,
    )


def may_repeat(exc: Unavailable, *, idempotent: bool) -> bool:
    """Whether the policy allows sending the request again after `exc` (here or elsewhere)."""
    return idempotent or exc.not_done


def backoff_s(attempt: int, exc: Unavailable | None = None, *, rng: Any = random) -> float:
    """Exponential back-off with full jitter for retry number `attempt` (0 first), never below a
    Retry-After the server asked for."""
    cap = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** min(attempt, 16))
    delay: float = rng.uniform(BACKOFF_MIN_S / 2, cap)
    if exc is not None and exc.retry_after_s is not None:
        delay = max(delay, exc.retry_after_s)
    return delay


class Transport(Protocol):
    """Sends one request and returns whatever status came back. Raises Unavailable only: with
    not_done=True when no connection could be made, else (timeout, reset) not_done=False."""

    async def send(
        self, method: str, url: str, *, body: bytes | None, headers: Mapping[str, str], timeout_s: float
    ) -> Answer: ...

    async def close(self) -> None: ...


class AiohttpTransport:
    """A Transport over one aiohttp ClientSession: keep-alive, pooled connections. A session passed
    in is closed by close() only when `owns_session` says so (by default only one made here)."""

    def __init__(
        self,
        session: aiohttp.ClientSession | None = None,
        *,
        connections: int = 100,
        keepalive_s: float = 15.0,
        owns_session: bool | None = None,
    ) -> None:
        self._owns_session = session is None if owns_session is None else owns_session
        self.session = session or aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections, keepalive_timeout=keepalive_s), auto_decompress=False
        )

    async def send(
        self, method: str, url: str, *, body: bytes | None, headers: Mapping[str, str], timeout_s: float
    ) -> Answer:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with self.session.request(
                method, URL(url, encoded=True), data=body, headers=dict(headers), timeout=timeout
            ) as resp:
                data = await resp.read()
                return Answer(resp.status, {k.lower(): v for k, v in resp.headers.items()}, data, url)
        except aiohttp.ClientConnectorError as exc:
            reason = describe_exception(exc)
            raise Unavailable(f"{url}: {reason}", url=url, reason=reason, not_done=True) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = describe_exception(exc)
            raise Unavailable(f"{url}: {reason}", url=url, reason=reason) from None

    async def close(self) -> None:
        if self._owns_session:
            await self.session.close()


class HttpClient:
    """Calls to one server: base URL, default headers and timeout, the retry policy above."""

    def __init__(
        self, base_url: str, transport: Transport, *, headers: Mapping[str, str] | None = None, timeout_s: float = 20.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.transport = transport
        self.headers = dict(headers or {})
        self.timeout_s = timeout_s

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        idempotent: bool | None = None,
        retries: int = 0,
        expect_json: bool = False,
    ) -> Answer:
        """The 2xx answer to one request; errors as in the module docstring. `retries` extra
        attempts are made only where the policy allows (idempotent, or proven not done). With
        `expect_json`, a 2xx body that is not JSON is an unreadable answer (Unavailable)."""
        if idempotent is None:
            idempotent = method in ("GET", "HEAD")
        all_headers = {**self.headers, **(headers or {})} if headers else self.headers
        if json_body is not None:
            body = orjson.dumps(json_body)
            all_headers = {**all_headers, "Content-Type": all_headers.get("Content-Type", "application/json")}
        what = f"{self.base_url} {method} {path.split('?', maxsplit=1)[0]}"
        attempt = 0
        while True:
            try:
                try:
                    answer = await self.transport.send(
                        method,
                        self.base_url + path,
                        body=body,
                        headers=all_headers,
                        timeout_s=timeout_s or self.timeout_s,
                    )
                except Unavailable as exc:
                    raise _located(exc, what) from None
                check(answer, what)
                if expect_json:
                    answer.json()
                return answer
            except Unavailable as exc:
                if attempt >= retries or not may_repeat(exc, idempotent=idempotent):
                    raise
                await asyncio.sleep(backoff_s(attempt, exc))
                attempt += 1


def _located(exc: Unavailable, what: str) -> Unavailable:
    """A transport's failure, its message starting with the call it failed ("<server> <METHOD> <path>")."""
    return Unavailable(
        f"{what}: {exc.reason}",
        url=exc.url,
        status=exc.status,
        reason=exc.reason,
        not_done=exc.not_done,
        retry_after_s=exc.retry_after_s,
    )


class Failover:
    """Servers in order of preference. A call goes to one and moves on to the next only where the
    retry policy allows; when every server was tried, `rounds` more passes follow after a back-off."""

    def __init__(self, clients: Sequence[HttpClient]) -> None:
        if not clients:
            raise ValueError("Failover needs at least one server")
        self.clients = list(clients)

    async def call(
        self,
        method: str,
        path: str,
        *,
        first: int = 0,
        rounds: int = 0,
        body: bytes | None = None,
        json_body: Any = None,
        timeout_s: float | None = None,
        idempotent: bool | None = None,
        expect_json: bool = False,
    ) -> tuple[int, Answer]:
        """(index of the server that answered, its 2xx answer). Raises the last server's error:
        Refused at once, Unavailable when nobody could answer (or a lost answer must not be repeated)."""
        if idempotent is None:
            idempotent = method in ("GET", "HEAD")
        failures: list[str] = []
        n = len(self.clients)
        for round_ in range(rounds + 1):
            last: Unavailable | None = None
            for k in range(n):
                index = (first + k) % n
                try:
                    answer = await self.clients[index].call(
                        method,
                        path,
                        body=body,
                        json_body=json_body,
                        timeout_s=timeout_s,
                        idempotent=idempotent,
                        expect_json=expect_json,
                    )
                    return index, answer
                except Unavailable as exc:
                    failures.append(str(exc))
                    last = exc
                    if not may_repeat(exc, idempotent=idempotent):
                        raise Unavailable(
                            f"{exc}; it may or may not have been applied, so it was not repeated",
                            url=exc.url,
                            status=exc.status,
                            reason=exc.reason,
                        ) from None
            if round_ < rounds:
                await asyncio.sleep(backoff_s(round_, last))
        reason = "no server could answer: " + "; ".join(failures[-n:])
        raise Unavailable(
            reason,
            status=last.status if last else None,
            reason=reason,
            not_done=True,
            retry_after_s=last.retry_after_s if last else None,
        )
