"""Errors the service raises for its callers, each with the HTTP status the API answers with."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """A request the service will not carry out; answered as JSON `{"error": message}`."""

    status = 400
    reason = "other"  # the refusal's kind, a label of dynwork_requests_refused_total

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: int | None = None,
        details: dict[str, Any] | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
        self.details = details or {}  # more fields of the JSON answer
        if reason is not None:
            self.reason = reason


class BadRequest(ServiceError):
    status = 400
    reason = "bad_request"


class Unauthenticated(ServiceError):
    status = 401
    reason = "unauthenticated"


class NotFound(ServiceError):
    status = 404
    reason = "not_found"


class Conflict(ServiceError):
    """The request names leases or jobs that are not the caller's; nothing was done."""

    status = 409
    reason = "conflict"


class TooLarge(ServiceError):
    status = 413
    reason = "too_large"


class Unavailable(ServiceError):
    """Not now: queue full, stopping, storage or the owning peer unreachable (with Retry-After)."""

    status = 503
