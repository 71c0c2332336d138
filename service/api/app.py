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
from fastapi_swagger import patch_fastapi
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.routes import ANNOUNCED, router
from service.errors import (
    InvalidRequest,
    MalformedBody,
    PayloadTooLarge,
    ServiceError,
    error_body,
    summarize_validation_errors,
)
from service.http.endpoint import PredictPath
from service.inference.batching import Batcher
from service.inference.gc_tuning import settle_garbage_collector
from service.inference.model_host import ModelHost, load_predictor
from service.inference.model_service import ServiceState
from service.inference.predictor import Predictor
from service.observability.logs import access_writer
from service.observability.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("service")

ROUTES = frozenset(
    {"/predict", "/health/live", "/health/ready", "/model", "/metrics", "/admin/reload", "/docs", "/openapi.json"}
)
_MAX_REQUEST_ID = 128


class ObservabilityMiddleware:
    """Request id, body-size guard, metrics and one access-log line per request, as plain ASGI
    (BaseHTTPMiddleware would add a task and stream copies per request).

    It sits outside FastAPI's own middleware stack (see :class:`ServiceApp`) and hands
    ``POST /predict`` with a Content-Length to the lean path (service/http/endpoint.py), which
    falls back to the FastAPI route for anything it does not accept.
    """

    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app = app
        self.state = state
        settings = state.settings
        # The largest valid body: every text at full length, each character escaped (worst
        # case 12 bytes: a surrogate pair), plus room for the JSON around them.
        self.max_body = settings.max_texts_per_request * (settings.max_text_chars * 12 + 8) + 65536
        self.fast = PredictPath(state, self._dispatch)
        self.write_access = access_writer() if settings.access_log else None
        metrics = state.metrics
        # prometheus_client's labels() takes a lock and builds a key per call: resolve once.
        self._in_flight = {route: metrics.in_flight.labels(route) for route in (*ROUTES, "unmatched")}
        self._latency = {route: metrics.latency.labels(route) for route in (*ROUTES, "unmatched")}
        self._counters: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = ""
        length: bytes | None = None
        timeout: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if 0 < len(value) <= _MAX_REQUEST_ID and value.isascii() and value.decode().isprintable():
                    request_id = value.decode()
            elif name == b"content-length":
                length = value
            elif name == b"x-request-timeout-ms":
                timeout = value
        request_id = request_id or f"{random.getrandbits(128):032x}"  # not security-relevant; uuid4 is slower
        method = scope["method"]
        if method == "POST":
            _read_body_as_json(scope)
        header = (b"x-request-id", request_id.encode())
        status = 500
        path = scope["path"]
        route = path if path in ROUTES else "unmatched"
        in_flight = self._in_flight[route]
        in_flight.inc()
        batcher = self.state.batcher
        predict = path == "/predict" and method == "POST"
        if predict and batcher is not None:
            batcher.announce()
            scope[ANNOUNCED] = True
        try:
            if length is not None and length.isdigit() and int(length) > self.max_body:
                status = await self._respond(_error_response(self._too_large()), scope, receive, send, header)
            elif predict:  # a chunked body is counted against the limit as it arrives
                limited = receive if length is not None else self._limit(receive)
                status = await self._fast(scope, limited, send, header, timeout)
            elif length is None and method == "POST":
                status = await self._dispatch(scope, self._limit(receive), send, header)
            else:  # the server reads exactly Content-Length bytes
                status = await self._dispatch(scope, receive, send, header)
        finally:
            if scope.get(ANNOUNCED) and batcher is not None:
                batcher.withdraw()
            elapsed = time.perf_counter() - started
            in_flight.dec()
            key = (route, method, status)
            counter = self._counters.get(key)
            if counter is None:
                counter = self._counters[key] = self.state.metrics.requests.labels(route, method, str(status))
            counter.inc()
            self._latency[route].observe(elapsed)
            if self.write_access is not None:
                self.write_access(method, path, status, round(elapsed * 1000, 3), request_id)

    async def _fast(
        self, scope: Scope, receive: Receive, send: Send, header: tuple[bytes, bytes], timeout: bytes | None
    ) -> int:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            return await self.fast(scope, receive, tracking_send, header, timeout)
        except ServiceError as exc:  # e.g. a chunked body over the limit, raised while reading it
            if started:
                raise
            return await self._respond(_error_response(exc), scope, receive, send, header)
        except Exception as exc:
            if started:
                raise
            log.exception("unhandled error")  # the same answer as the app's catch-all handler
            response = _error_response(ServiceError(f"internal error: {type(exc).__name__}"))
            return await self._respond(response, scope, receive, send, header)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send, header: tuple[bytes, bytes]) -> int:
        """The FastAPI app, with the request id added to the response; returns the status sent."""
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self.app(scope, receive, send_with_id)
        return status

    async def _respond(
        self, response: Response, scope: Scope, receive: Receive, send: Send, header: tuple[bytes, bytes]
    ) -> int:
        response.raw_headers.append(header)
        await response(scope, receive, send)
        return response.status_code

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


class ServiceApp(FastAPI):
    """FastAPI with :class:`ObservabilityMiddleware` outermost, ahead of FastAPI's own middleware stack.

    (``add_middleware`` would put it inside Starlette's error and exception layers, which the
    lean /predict path does not need; everything else still goes through them.)
    """

    observability: ObservabilityMiddleware | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.observability is None:
            await super().__call__(scope, receive, send)
        else:
            await self.observability(scope, receive, send)

    async def inner(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


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


def create_app(
    settings: Settings, predictor: Predictor | None = None, model_host: ModelHost | None = None
) -> ServiceApp:
    """The app for ``settings``; ``predictor`` may be preloaded (``python -m service`` does, to fail early).

    A preloaded predictor comes with the ``model_host`` it was loaded into (None: in this
    process), and reloads go there too; the app stops that host when it shuts down.
    """
    if predictor is None and model_host is None and settings.model_process:
        model_host = ModelHost()
    state = ServiceState(settings=settings, metrics=Metrics(), model_host=model_host)
    # Handed over once: afterwards state.predictor is the only reference, so a reload frees this model.
    handed_over = [predictor] if predictor is not None else []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if handed_over:
            loaded = handed_over.pop()
        else:
            loaded = await asyncio.to_thread(
                load_predictor, settings.artifacts_dir, settings.version, settings.device, model_host
            )
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
        del loaded
        try:
            yield
        finally:
            state.draining = True
            warmup.cancel()
            await state.batcher.stop(timeout=settings.shutdown_timeout_s)
            if model_host is not None:  # after the batcher: no batch is running
                await asyncio.to_thread(model_host.close)
            log.info("batcher drained; shutdown complete")

    app = ServiceApp(
        title="Headline classifier",
        version="1.0",
        description="Classifies news headlines into topics with a bidirectional GRU; GET /model names the version.",
        lifespan=lifespan,
        docs_url=None,  # served by fastapi_swagger below, from its packaged assets (no CDN)
        swagger_ui_oauth2_redirect_url=None,
        # No 307 from /predict/ to /predict: its Location would echo the client's Host header.
        redirect_slashes=False,
    )
    patch_fastapi(app, docs_url="/docs", redirect_from_root_to_docs=False)
    app.state.service = state
    _document_limits(app, settings)
    app.include_router(router)
    app.observability = ObservabilityMiddleware(app.inner, state)

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
            assert state.batcher is not None
            await state.batcher.warm_up(predictor)
        except Exception:  # noqa: BLE001 - stay unready, keep the process up for inspection
            log.exception("warm-up failed; readiness stays 503")
            return
        log.info("warm-up done in %.2fs", time.monotonic() - started)
    settle_garbage_collector()
    state.ready = True
