"""Errors the service raises for its callers, each with the HTTP status the API answers with."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """A request the service will not carry out; answered as JSON `{"error": message}`."""

    status = 400

    def __init__(
        self, message: str, *, retry_after_s: int | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
        self.details = details or {}  # more fields of the JSON answer


class BadRequest(ServiceError):
    status = 400


class Unauthenticated(ServiceError):
    status = 401


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    """The request names leases or jobs that are not the caller's; nothing was done."""

    status = 409


class TooLarge(ServiceError):
    status = 413


class Unavailable(ServiceError):
    """Not now: queue full, stopping, storage or the owning peer unreachable (with Retry-After)."""

    status = 503
