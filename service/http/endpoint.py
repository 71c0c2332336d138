"""The lean ``POST /predict`` path: the hot request skips FastAPI's routing, dependency and validation layers.

Profiling the default server at 64 clients (py-spy, BENCHMARKS.md) put ~45% of the event
loop's time in FastAPI/Starlette layers around a request that needs one JSON decode, a
few checks, a queue hand-off and one JSON encode. This path does exactly that, with msgspec:

- it answers only requests it fully accepts: a JSON object with exactly one of ``text`` /
  ``texts``, strings only, none blank (the schema's one whitespace rule), within the
  runtime limits, and a body with a Content-Length;
- anything else (bad JSON, wrong types, blank or too many texts, odd encodings, chunked
  bodies) is replayed, byte for byte, to the FastAPI route in service/api/routes.py, so every
  input error keeps the status and message it always had, and /openapi.json (generated from
  that route) describes both;
- the prediction itself goes through the same :func:`service.api.routes.predict_texts` and
  :func:`service.api.routes.render_predictions` as the route.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import msgspec
from starlette.types import Message, Receive, Scope, Send

from service.api.routes import ANNOUNCED, predict_texts, render_predictions, request_timeout
from service.api.schemas import is_blank
from service.errors import ServiceError, error_body
from service.http.predict_body import screen_predict_body
from service.inference.model_service import ServiceState

log = logging.getLogger("service")

# (scope, receive, send, request-id header) -> the status the slow path answered with
Fallback = Callable[[Scope, Receive, Send, tuple[bytes, bytes]], Awaitable[int]]
_JSON = (b"content-type", b"application/json")
CLIENT_GONE = 499


class _Body(msgspec.Struct, forbid_unknown_fields=True):
    """What a well-formed body decodes to; anything msgspec refuses goes to the FastAPI route."""

    text: str | msgspec.UnsetType = msgspec.UNSET
    texts: list[str] | msgspec.UnsetType = msgspec.UNSET


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the already-read body to the slow path, then defers to the server."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class PredictPath:
    """``await path(scope, receive, send, id_header, timeout_header)`` answers one POST /predict; returns the status."""

    def __init__(self, state: ServiceState, fallback: Fallback) -> None:
        self.state = state
        self.fallback = fallback
        self.max_texts = state.settings.max_texts_per_request
        self.max_chars = state.settings.max_text_chars
        self._decode = msgspec.json.Decoder(_Body).decode

    def accepted_texts(self, body: bytes) -> list[str] | None:
        """The texts of a request this path may answer, or None to leave it to the FastAPI route."""
        try:
            parsed = self._decode(body)
        except (msgspec.DecodeError, ValueError):  # ValueError: invalid UTF-8 inside a string
            return None
        text, texts = parsed.text, parsed.texts
        if text is not msgspec.UNSET:
            if texts is not msgspec.UNSET:
                return None
            texts = [text]
        elif texts is msgspec.UNSET or not texts or len(texts) > self.max_texts:
            return None
        max_chars = self.max_chars
        for item in texts:
            if len(item) > max_chars or is_blank(item):
                return None
        return texts

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, id_header: tuple[bytes, bytes], timeout: bytes | None
    ) -> int:
        message = await receive()
        body = message.get("body", b"")
        if message.get("more_body", False):
            chunks = [body]
            while message.get("more_body", False):
                message = await receive()
                chunks.append(message.get("body", b""))
            body = b"".join(chunks)
        if message["type"] == "http.disconnect":
            return CLIENT_GONE
        texts = self.accepted_texts(body)
        if texts is None:
            # Before the full parse: a body no valid request can be is refused in bounded work
            # (a 3 MB list of 1.5 million numbers must not become 1.5 million pydantic errors).
            problem = screen_predict_body(body, self.max_texts, self.max_chars)
            if problem is None:
                return await self.fallback(scope, _replay(body, receive), send, id_header)
            # Answered, not raised: a raised error's traceback would keep this frame, and so the
            # body, alive in a reference cycle until the (relaxed) cyclic GC runs; a thousand
            # 3 MB bodies then held 4 GB after they were answered.
            del body
            return await _send_error(send, problem, [_JSON, id_header])
        state = self.state
        if scope.get(ANNOUNCED):  # read and checked: no longer "arriving" (see Batcher.announce)
            scope[ANNOUNCED] = False
            if state.batcher is not None:
                state.batcher.withdraw()
        headers = [_JSON, id_header]
        try:
            timeout_s = request_timeout(timeout, state.settings.request_timeout_s)
            content = render_predictions(await predict_texts(state, texts, timeout_s, receive))
        except ServiceError as exc:
            if exc.status_code == CLIENT_GONE:
                return CLIENT_GONE
            if exc.status_code >= 500 and exc.status_code not in (503, 504):
                log.error("request failed: %s", exc.message)
            return await _send_error(send, exc, headers)
        return await _send(send, 200, content, headers)


async def _send(send: Send, status: int, content: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    headers.append((b"content-length", str(len(content)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})
    return status


async def _send_error(send: Send, exc: ServiceError, headers: list[tuple[bytes, bytes]]) -> int:
    """The error body every path answers with, plus the error's own headers (e.g. Retry-After)."""
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    return await _send(send, exc.status_code, error_body(exc.error_type, exc.message, exc.details), headers)
