"""Every answer that is not a prediction: the error classes, one table from class to HTTP
(status, type, Retry-After), and one renderer that every path uses, the protocol guard's raw
answers included. The JSON shape is always ``{"error": {"type", "message", "details"}}``.

The classes say what went wrong, not how HTTP spells it: the data plane raises
:class:`Overloaded` or :class:`PredictionTimedOut` and never sees a status code.
"""

from __future__ import annotations

import http
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("service")

# Any error body stays small whatever the request: an invalid 3 MB body must not cost a
# 200 MB answer. Details past the first few are counted, not listed.
MAX_ERROR_BODY_BYTES = 16 * 1024
MAX_ERROR_DETAILS = 10
MAX_MESSAGE_ERRORS = 3
_MAX_TEXT = 300
JSON_CONTENT = (b"content-type", b"application/json")


class ServiceError(Exception):
    """A failure with a message for the client; :data:`ERRORS` gives its status and type."""

    def __init__(self, message: str, details: list[Any] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.headers = headers or {}


# -- the request --------------------------------------------------------------------------
class MalformedBody(ServiceError):
    """The body is not UTF-8 JSON."""


class InvalidRequest(ServiceError):
    """The body is JSON but not a valid request."""


class InvalidHeader(ServiceError):
    """A header the service reads has a bad value."""


class PayloadTooLarge(ServiceError):
    """The body is larger than any valid request."""


class Unauthorized(ServiceError):
    """Missing or wrong bearer token."""


class NotFound(ServiceError):
    """No such route, or an endpoint that is switched off."""


class MethodNotAllowed(ServiceError):
    """The route exists, the method does not."""


# -- the connection (answered by the protocol guard, before any app code runs) --------------
class MalformedRequest(ServiceError):
    """Not a valid HTTP request."""


class RequestTimedOut(ServiceError):
    """The request head or body did not arrive in time."""


class UriTooLong(ServiceError):
    """The request line is over the header limit."""


class HeadersTooLarge(ServiceError):
    """The request headers are over the header limit."""


# -- the model (raised by the data plane) ---------------------------------------------------
class Overloaded(ServiceError):
    """Too much work queued, too many connections, or shutting down: retry later."""


class ModelUnavailable(ServiceError):
    """No model to compute with right now (loading, or its process was lost): retry later."""


class PredictionTimedOut(ServiceError):
    """The request's deadline passed before its answer was ready."""


class ClientGone(ServiceError):
    """The client left before its batch started; nobody reads this answer (logged as 499)."""


class ReloadFailed(ServiceError):
    """A new version failed to load; the old one keeps serving."""


class PredictionFailed(ServiceError):
    """The model failed on a batch: a bug or a broken model, never the client's fault."""


class InternalError(ServiceError):
    """An unexpected exception, already logged with its traceback where it was caught."""


@dataclass(frozen=True)
class ErrorKind:
    status: int
    type: str
    retry: bool = False  # carries Retry-After: the same request may succeed later


ERRORS: dict[type[ServiceError], ErrorKind] = {
    MalformedBody: ErrorKind(400, "malformed_body"),
    InvalidHeader: ErrorKind(400, "invalid_header"),
    Unauthorized: ErrorKind(401, "unauthorized"),
    NotFound: ErrorKind(404, "not_found"),
    MethodNotAllowed: ErrorKind(405, "method_not_allowed"),
    ReloadFailed: ErrorKind(409, "reload_failed"),
    PayloadTooLarge: ErrorKind(413, "payload_too_large"),
    InvalidRequest: ErrorKind(422, "invalid_request"),
    ClientGone: ErrorKind(499, "client_closed_request"),
    PredictionFailed: ErrorKind(500, "internal_error"),
    InternalError: ErrorKind(500, "internal_error"),
    Overloaded: ErrorKind(503, "overloaded", retry=True),
    ModelUnavailable: ErrorKind(503, "overloaded", retry=True),
    PredictionTimedOut: ErrorKind(504, "timeout", retry=True),
    # An HTTP-level problem, not a bad body: the guard answers it and closes the connection.
    MalformedRequest: ErrorKind(400, "malformed_request"),
    RequestTimedOut: ErrorKind(408, "timeout"),
    UriTooLong: ErrorKind(414, "uri_too_long"),
    HeadersTooLarge: ErrorKind(431, "headers_too_large"),
}
_INTERNAL = ErrorKind(500, "internal_error")


def error_kind(exc: ServiceError) -> ErrorKind:
    for cls in type(exc).__mro__:
        kind = ERRORS.get(cls)
        if kind is not None:
            return kind
    return _INTERNAL


@dataclass(frozen=True)
class ErrorAnswer:
    """A rendered error: what an ASGI ``send`` or the raw protocol writes."""

    status: int
    headers: list[tuple[bytes, bytes]]  # content-type, Retry-After and the error's own headers
    body: bytes


class ErrorRenderer:
    """Renders any :class:`ServiceError` for one server (its Retry-After value)."""

    def __init__(self, retry_after_s: int) -> None:
        self.retry_after = str(retry_after_s).encode()

    def render(self, exc: ServiceError) -> ErrorAnswer:
        kind = error_kind(exc)
        if kind.status >= 500 and kind.status not in (503, 504) and not isinstance(exc, InternalError):
            log.error("request failed: %s", exc.message)
        headers = [JSON_CONTENT]
        if kind.retry:
            headers.append((b"retry-after", self.retry_after))
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
        return ErrorAnswer(kind.status, headers, error_body(kind.type, exc.message, exc.details))

    def raw(self, exc: ServiceError) -> bytes:
        """A complete ``connection: close`` HTTP/1.1 response, for answers written to the socket."""
        answer = self.render(exc)
        lines = [f"HTTP/1.1 {answer.status} {http.HTTPStatus(answer.status).phrase}".encode()]
        lines += [name + b": " + value for name, value in answer.headers]
        lines += [b"content-length: %d" % len(answer.body), b"connection: close", b"", b""]
        return b"\r\n".join(lines) + answer.body


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
    """``(message, details)`` for a 422 from field errors (``loc``, ``msg``, ``type``), bounded whatever their number.

    ``details`` lists the first MAX_ERROR_DETAILS errors, each clipped; ``message`` names the
    first few and the total count. Only the listed errors are looked at, so a lazy iterable of
    a million errors costs no more than ten; pass ``total`` when the iterable is lazy so the
    count is still exact.
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
    """Make error details JSON-safe (bytes inputs, exception contexts)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)
