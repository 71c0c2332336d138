"""Error classes that carry their HTTP status, and the one JSON shape every error uses:
``{"error": {"type": ..., "message": ..., "details": [...]}}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

# Any error body stays small whatever the request: an invalid 3 MB body must not cost a
# 200 MB answer (issue 8). Details past the first few are counted, not listed.
MAX_ERROR_BODY_BYTES = 16 * 1024
MAX_ERROR_DETAILS = 10
MAX_MESSAGE_ERRORS = 3
_MAX_TEXT = 300


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
    """The JSON error body, at most MAX_ERROR_BODY_BYTES: over it, details and then the message are cut."""
    details = details or []
    body = json.dumps({"error": {"type": error_type, "message": message, "details": details}}).encode()
    if len(body) <= MAX_ERROR_BODY_BYTES:
        return body
    message = _clip(message, 4 * _MAX_TEXT)
    kept: list[Any] = []
    for detail in details[:MAX_ERROR_DETAILS]:
        candidate = json.dumps({"error": {"type": error_type, "message": message, "details": [*kept, detail]}})
        if len(candidate.encode()) > MAX_ERROR_BODY_BYTES:
            break
        kept.append(detail)
    return json.dumps({"error": {"type": error_type, "message": message, "details": kept}}).encode()


def _clip(text: str, limit: int = _MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summarize_validation_errors(errors: Iterable[Mapping[str, Any]], total: int | None = None) -> tuple[str, list[Any]]:
    """``(message, details)`` for a 422 from pydantic-style errors, bounded whatever their number.

    ``details`` lists the first MAX_ERROR_DETAILS errors (``loc``, ``msg``, ``type``, each
    clipped); ``message`` names the first few and the total count. Only the listed errors are
    looked at, so a lazy iterable of a million errors costs no more than ten; pass ``total``
    when the iterable is lazy so the count is still exact.
    """
    details: list[Any] = []
    count = 0
    for error in errors:
        count += 1
        if count > MAX_ERROR_DETAILS:
            if total is not None:
                break
            continue
        loc = [_clip(p, 64) if isinstance(p, str) else p for p in list(error.get("loc", ()))[:8]]
        msg = _clip(str(error.get("msg", "")).removeprefix("Value error, "))
        details.append(jsonable({"loc": loc, "msg": msg, "type": str(error.get("type", ""))}))
    total = count if total is None else total
    shown = "; ".join(f"{'.'.join(str(p) for p in d['loc'])}: {d['msg']}" for d in details[:MAX_MESSAGE_ERRORS])
    message = shown or "invalid request"
    if total > MAX_MESSAGE_ERRORS:
        message += f" (and {total - MAX_MESSAGE_ERRORS} more; {total} errors in all)"
    return message, details


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
