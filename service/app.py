"""create_app(settings): the FastAPI app, its lifespan and a pure-ASGI observability layer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.batching import Batcher
from service.body_screen import screen_predict_body
from service.errors import (
    InvalidRequest,
    MalformedBody,
    PayloadTooLarge,
    ServiceError,
    error_body,
    summarize_validation_errors,
)
from service.gc_tuning import settle_garbage_collector
from service.metrics import Metrics
from service.predictor import Predictor
from service.routes import ANNOUNCED, router
from service.settings import Settings
from service.state import ServiceState

log = logging.getLogger("service")
access_log = logging.getLogger("service.access")

ROUTES = frozenset(
    {"/predict", "/health/live", "/health/ready", "/model", "/metrics", "/admin/reload", "/docs", "/openapi.json"}
)
_MAX_REQUEST_ID = 128
CLIENT_CLOSED = 499  # logged and counted when the client went away before its request was complete


class ObservabilityMiddleware:
    """Request id, body-size guard, metrics and one access-log line per request, as plain ASGI
    (BaseHTTPMiddleware would add a task and stream copies per request)."""

    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app = app
        self.state = state
        settings = state.settings
        # The largest valid body: every text at full length, each character escaped (worst
        # case 12 bytes: a surrogate pair), plus room for the JSON around them.
        self.max_body = settings.max_texts_per_request * (settings.max_text_chars * 12 + 8) + 65536

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = ""
        length: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if 0 < len(value) <= _MAX_REQUEST_ID and value.isascii() and value.decode().isprintable():
                    request_id = value.decode()
            elif name == b"content-length":
                length = value
        request_id = request_id or f"{random.getrandbits(128):032x}"  # not security-relevant; uuid4 is slower
        if scope["method"] == "POST":
            _read_body_as_json(scope)
        header = (b"x-request-id", request_id.encode())
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        path = scope["path"]
        route = path if path in ROUTES else "unmatched"
        metrics = self.state.metrics
        in_flight = metrics.in_flight.labels(route)
        in_flight.inc()
        batcher = self.state.batcher
        if path == "/predict" and scope["method"] == "POST" and batcher is not None:
            batcher.announce()
            scope[ANNOUNCED] = True
        try:
            if length is not None and length.isdigit() and int(length) > self.max_body:
                await _error_response(self._too_large())(scope, receive, send_with_id)
                return
            if length is None and scope["method"] == "POST":
                receive = self._limit(receive)  # else the server reads exactly Content-Length bytes
            if path == "/predict" and scope["method"] == "POST":
                screened = await self._screen(receive)
                if screened is None:  # the client left (or was cut off) before its body was complete
                    status = CLIENT_CLOSED
                    return
                if isinstance(screened, ServiceError):
                    await _error_response(screened)(scope, receive, send_with_id)
                    return
                receive = screened
            await self.app(scope, receive, send_with_id)
        finally:
            if scope.get(ANNOUNCED) and batcher is not None:
                batcher.withdraw()
            elapsed = time.perf_counter() - started
            in_flight.dec()
            metrics.requests.labels(route, scope["method"], str(status)).inc()
            metrics.latency.labels(route).observe(elapsed)
            if self.state.settings.access_log and access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "request",
                    extra={
                        "method": scope["method"],
                        "path": path,
                        "status": status,
                        "latency_ms": round(elapsed * 1000, 3),
                        "request_id": request_id,
                    },
                )

    async def _screen(self, receive: Receive) -> Receive | ServiceError | None:
        """Read the whole body and screen it (body_screen.py): the error to answer, a receive
        that replays the body to the app, or None when the client disconnected meanwhile
        (then the app is not called: no exception chain ends up holding the partial body)."""
        chunks: list[bytes] = []
        try:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return None
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        except PayloadTooLarge as exc:
            return exc
        body = b"".join(chunks)
        del chunks
        settings = self.state.settings
        problem = screen_predict_body(body, settings.max_texts_per_request, settings.max_text_chars)
        if problem is not None:
            return problem
        replayed = False

        async def replay() -> Message:
            nonlocal replayed, body
            if replayed:
                return await receive()
            replayed, message = True, {"type": "http.request", "body": body, "more_body": False}
            body = b""
            return message

        return replay

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body over {self.max_body} bytes")

    def _limit(self, receive: Receive) -> Receive:
        """Bodies without Content-Length (chunked) are counted as they arrive."""
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise self._too_large()
            return message

        return limited


def _read_body_as_json(scope: Scope) -> None:
    """Every POST body here is JSON, whatever Content-Type says.

    ``curl -d '{"text": ...}'`` sends ``application/x-www-form-urlencoded`` unless told
    otherwise, and FastAPI would then refuse a perfectly good JSON body with a confusing 422.
    A body that is not JSON still gets a 400 saying so.
    """
    headers = scope["headers"]
    for name, value in headers:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            if media == b"application/json" or media.endswith(b"+json"):
                return
    scope["headers"] = [(n, v) for n, v in headers if n != b"content-type"] + [(b"content-type", b"application/json")]


def _error_response(exc: ServiceError) -> Response:
    return Response(
        error_body(exc.error_type, exc.message, exc.details),
        status_code=exc.status_code,
        media_type="application/json",
        headers=exc.headers,
    )


def _validation_response(exc: RequestValidationError) -> Response:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        reason = next((e.get("ctx", {}).get("error") for e in errors if e.get("type") == "json_invalid"), None)
        _, details = summarize_validation_errors(errors)
        return _error_response(MalformedBody(f"body is not valid JSON ({reason or 'decode error'})", details))
    message, details = summarize_validation_errors(errors)
    return _error_response(InvalidRequest(message, details))


def _http_error_response(exc: StarletteHTTPException) -> Response:
    kinds = {400: "malformed_body", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
    if isinstance(exc.__cause__, ServiceError):  # raised while FastAPI read the body (size guard)
        return _error_response(exc.__cause__)
    message = str(exc.detail)
    if exc.status_code == 400 and "parsing the body" in message:
        message = "could not parse the body (it must be UTF-8 encoded JSON)"
    err = ServiceError(message, headers=dict(exc.headers or {}))
    err.status_code, err.error_type = exc.status_code, kinds.get(exc.status_code, "http_error")
    return _error_response(err)


def create_app(settings: Settings, predictor: Predictor | None = None) -> FastAPI:
    """The app for ``settings``; ``predictor`` may be preloaded (``python -m service`` does, to fail early)."""
    state = ServiceState(settings=settings, metrics=Metrics())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = predictor
        if loaded is None:
            loaded = await asyncio.to_thread(Predictor.load, settings.artifacts_dir, settings.version, settings.device)
        state.set_predictor(loaded)
        state.batcher = Batcher(
            state.current_predictor,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue_size=settings.max_queue_size,
            metrics=state.metrics,
        )
        state.batcher.start()
        warmup = asyncio.create_task(_warm_up(state), name="warmup")
        log.info(
            "serving model %s on %s (max_batch_size=%d, max_wait_ms=%g)",
            loaded.version,
            loaded.device,
            settings.max_batch_size,
            settings.max_wait_ms,
        )
        try:
            yield
        finally:
            state.draining = True
            warmup.cancel()
            await state.batcher.stop(timeout=settings.shutdown_timeout_s)
            log.info("batcher drained; shutdown complete")

    app = FastAPI(
        title="Headline classifier",
        version="1.0",
        description="Classifies news headlines into topics with a bidirectional GRU; GET /model names the version.",
        lifespan=lifespan,
        # No 307 from /predict/ to /predict: its Location would echo the client's Host header.
        redirect_slashes=False,
    )
    app.state.service = state
    _document_limits(app, settings)
    app.include_router(router)
    app.add_middleware(ObservabilityMiddleware, state=state)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> Response:
        if exc.status_code >= 500 and exc.status_code not in (503, 504):
            log.error("request failed: %s", exc.message)
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return _validation_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _http_error_response(exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        return _error_response(ServiceError(f"internal error: {type(exc).__name__}"))

    return app


def _document_limits(app: FastAPI, settings: Settings) -> None:
    """Put this server's request limits into its OpenAPI schema (they are settings, not constants)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            props = schema["components"]["schemas"]["PredictRequest"]["properties"]
            props["text"]["maxLength"] = settings.max_text_chars
            props["texts"]["maxItems"] = settings.max_texts_per_request
            props["texts"]["items"]["maxLength"] = settings.max_text_chars
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]


async def _warm_up(state: ServiceState) -> None:
    predictor = state.current_predictor()
    if state.settings.warmup:
        started = time.monotonic()
        try:
            assert state.batcher is not None and state.batcher.executor is not None
            await asyncio.get_running_loop().run_in_executor(state.batcher.executor, predictor.warmup)
        except Exception:  # noqa: BLE001 - stay unready, keep the process up for inspection
            log.exception("warm-up failed; readiness stays 503")
            return
        log.info("warm-up done in %.2fs", time.monotonic() - started)
    settle_garbage_collector()
    state.ready = True
