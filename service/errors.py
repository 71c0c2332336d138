"""Error classes that carry their HTTP status, and the one JSON shape every error uses:
``{"error": {"type": ..., "message": ..., "details": [...]}}``.
"""

from __future__ import annotations

import json
from typing import Any


class ServiceError(Exception):
    status_code = 500
    error_type = "internal_error"

    def __init__(self, message: str, details: list[Any] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.headers = headers or {}


class InvalidRequest(ServiceError):
    status_code = 422
    error_type = "invalid_request"


class MalformedBody(ServiceError):
    status_code = 400
    error_type = "malformed_body"


class Unauthorized(ServiceError):
    status_code = 401
    error_type = "unauthorized"


class NotFound(ServiceError):
    status_code = 404
    error_type = "not_found"


class PayloadTooLarge(ServiceError):
    status_code = 413
    error_type = "payload_too_large"


class ReloadFailed(ServiceError):
    status_code = 409
    error_type = "reload_failed"


class ServiceUnavailable(ServiceError):
    status_code = 503
    error_type = "overloaded"


class Timeout(ServiceError):
    status_code = 504
    error_type = "timeout"


def error_body(error_type: str, message: str, details: list[Any] | None = None) -> bytes:
    return json.dumps({"error": {"type": error_type, "message": message, "details": details or []}}).encode()


def jsonable(value: Any) -> Any:
    """Make pydantic error details JSON-safe (bytes inputs, exception contexts)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


class InvalidHeader(ServiceError):
    status_code = 400
    error_type = "invalid_header"


class ClientClosedRequest(ServiceError):
    """Nobody reads this answer: the client left before its batch started (logged as 499, as nginx does)."""

    status_code = 499
    error_type = "client_closed_request"
