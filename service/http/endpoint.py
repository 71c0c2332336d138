"""The outermost ASGI app. Every HTTP request gets a request id, a body-size guard, its metrics
and one access-log line here. ``POST /predict`` is answered here too, in a straight line:
read the body, parse it (service/http/predict_body.py), hand the texts to the data plane
(:class:`ModelService`), render the answer. The Open Inference Protocol's
``POST /v2/models/{name}[/versions/{version}]/infer`` takes the same path with its own body
parser and renderer (service/http/v2.py). Every other route goes to the FastAPI app.

The hot request skips FastAPI's routing, dependency and validation layers: profiled at 64
clients they took about half of the event loop's time around a request that needs one JSON
decode, a few checks, a queue hand-off and one JSON encode.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import msgspec
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ErrorRenderer, InternalError, InvalidHeader, PayloadTooLarge, ServiceError
from service.http.predict_body import PredictBodyParser
from service.http.server import DisconnectProbe
from service.http.v2 import InferBodyParser, InferCall, InferTarget, infer_target, render_infer
from service.inference.model_service import ModelService
from service.inference.predictor import Prediction
from service.observability.logs import access_writer
from service.observability.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("service")

ROUTES = frozenset(
    {"/predict", "/health/live", "/health/ready", "/model", "/metrics", "/admin/reload", "/docs", "/openapi.json"}
)
# The Open Inference Protocol's routes, as metric labels (a path holds the model name and version).
V2_INFER = "/v2/models/{name}/infer"
V2_ROUTES = frozenset(
    {"/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{name}", "/v2/models/{name}/ready", V2_INFER}
)
TIMEOUT_HEADER = "X-Request-Timeout-Ms"
VERSION_HEADER = "X-Model-Version"  # /predict: the version to answer with (the default when absent)
CLIENT_GONE = 499  # logged, never sent: nobody reads it
_MAX_REQUEST_ID = 128
_JSON = (b"content-type", b"application/json")
_CONNECTION_CLOSE = (b"connection", b"close")
_encode = msgspec.json.Encoder().encode


def max_body_bytes(settings: Settings) -> int:
    """The largest valid body: every text at full length, each character escaped (worst case
    12 bytes: a surrogate pair), plus room for the JSON around them."""
    return settings.max_texts_per_request * (settings.max_text_chars * 12 + 8) + 65536


def request_timeout(value: bytes | None, cap_s: float) -> float:
    """Seconds this request may take: the client's ``X-Request-Timeout-Ms`` capped by ``cap_s``; 400 if bad."""
    if value is None:
        return cap_s
    text = value.decode("latin-1")
    digits = text.strip(" \t")
    significant = digits.lstrip("0")
    if not (digits.isascii() and digits.isdigit()) or not significant:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise InvalidHeader(
            f"invalid {TIMEOUT_HEADER} header {shown!r}: expected a positive integer number of milliseconds"
        )
    # More than 15 digits is past any cap (and int() of thousands of digits is slow).
    return cap_s if len(significant) > 15 else min(int(significant) / 1000.0, cap_s)


def render_predictions(prediction: Prediction) -> bytes:
    """The 200 body: per text its label, every class's probability (most probable first), the empty flag."""
    classes = prediction.classes
    indices = range(len(classes))
    items = []
    for row, empty in zip(prediction.probabilities.tolist(), prediction.empty, strict=True):
        order = sorted(indices, key=row.__getitem__, reverse=True)
        items.append({"label": classes[order[0]], "probabilities": {classes[i]: row[i] for i in order}, "empty": empty})
    return _encode({"model_version": prediction.version, "predictions": items})


def v2_route(path: str) -> str:
    """The metric label of an Open Inference Protocol path ("unmatched" for any other path)."""
    if not path.startswith("/v2"):
        return "unmatched"
    if path in V2_ROUTES:
        return path
    parts = path.split("/")
    if len(parts) < 4 or parts[2] != "models" or not parts[3]:
        return "unmatched"
    rest = parts[4:]
    if len(rest) >= 2 and rest[0] == "versions" and rest[1]:
        rest = rest[2:]
    if not rest:
        return "/v2/models/{name}"
    if rest == ["ready"]:
        return "/v2/models/{name}/ready"
    if rest == ["infer"]:
        return V2_INFER
    return "unmatched"


class Endpoint:
    """``Endpoint(api, model, settings, metrics)``: the ASGI app the server runs."""

    def __init__(self, api: ASGIApp, model: ModelService, settings: Settings, metrics: Metrics) -> None:
        self.api = api
        self.model = model
        self.tracing = model.tracing  # None: tracing off, no span work at all
        self.settings = settings
        self.metrics = metrics
        self.errors = ErrorRenderer(settings.retry_after_s)
        self.max_body = max_body_bytes(settings)
        self.parser = PredictBodyParser(settings.max_texts_per_request, settings.max_text_chars)
        self.v2_parser = InferBodyParser(settings.model_name, settings.max_texts_per_request, settings.max_text_chars)
        self.write_access = access_writer() if settings.access_log else None
        # prometheus_client's labels() takes a lock and builds a key per call: resolve once.
        routes = (*ROUTES, *V2_ROUTES, "unmatched")
        self._in_flight = {route: metrics.in_flight.labels(route) for route in routes}
        self._latency = {route: metrics.latency.labels(route) for route in routes}
        self._counters: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan
            await self.api(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = ""
        length: bytes | None = None
        timeout: bytes | None = None
        binary: bytes | None = None
        version: bytes | None = None
        traceparent: bytes | None = None
        tracestate: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if 0 < len(value) <= _MAX_REQUEST_ID and value.isascii() and value.decode().isprintable():
                    request_id = value.decode()
            elif name == b"content-length":
                length = value
            elif name == b"x-request-timeout-ms":
                timeout = value
            elif name == b"x-model-version":
                version = value
            elif name == b"inference-header-content-length":
                binary = value
            elif name == b"traceparent":
                traceparent = value
            elif name == b"tracestate":
                tracestate = value
        request_id = request_id or f"{random.getrandbits(128):032x}"  # not security-relevant; uuid4 is slower
        headers = [(b"x-request-id", request_id.encode())]
        if self.model.draining:  # each client's connection ends after this answer (see DrainingServer)
            headers.append(_CONNECTION_CLOSE)
        method, path = scope["method"], scope["path"]
        route = path if path in ROUTES else v2_route(path)
        in_flight = self._in_flight[route]
        in_flight.inc()
        status = 500
        tracing = self.tracing
        span = None if tracing is None else tracing.start_request(f"{method} {route}", traceparent, tracestate)
        try:
            if length is not None and length.isdigit() and int(length) > self.max_body:
                status = await self._error(send, PayloadTooLarge(self._too_large()), headers, route in V2_ROUTES)
            elif path == "/predict" and method == "POST":
                named = version.decode("latin-1") if version is not None else None
                status = await self._predict(receive, send, headers, length is None, timeout, request_id, named, span)
            elif route == V2_INFER and method == "POST" and (target := infer_target(path)) is not None:
                status = await self._predict(
                    receive, send, headers, length is None, timeout, request_id, target.version, span, target, binary
                )
            else:
                status = await self._dispatch(scope, receive, send, headers, method == "POST" and length is None)
        finally:
            elapsed = time.perf_counter() - started
            in_flight.dec()
            key = (route, method, status)
            counter = self._counters.get(key)
            if counter is None:
                counter = self._counters[key] = self.metrics.requests.labels(route, method, str(status))
            counter.inc()
            self._latency[route].observe(elapsed)
            if span is None:
                if self.write_access is not None:
                    self.write_access(method, path, status, round(elapsed * 1000, 3), request_id)
            else:
                self._end_span(span, route, method, status, request_id)
                if self.write_access is not None:
                    trace_id = self.tracing.trace_id(span)  # type: ignore[union-attr]
                    self.write_access(method, path, status, round(elapsed * 1000, 3), request_id, trace_id)

    async def _predict(
        self,
        receive: Receive,
        send: Send,
        headers: list[tuple[bytes, bytes]],
        chunked: bool,
        timeout: bytes | None,
        request_id: str,
        version: str | None,
        span: Any = None,
        v2: InferTarget | None = None,
        binary: bytes | None = None,
    ) -> int:
        """``POST /predict``, or (``v2``: its target) the Open Inference Protocol's infer; ``version``:
        the one the request names (None: the default, or the canary's share)."""
        model = self.model
        try:
            lane = model.route(version, request_id)
        except ServiceError as exc:
            return await self._error(send, exc, headers, v2 is not None)
        model.announce(lane)  # a small batch may wait for this request while its body arrives
        announced = True
        try:
            body = await self._read_body(receive, chunked)
            if body is None:
                return CLIENT_GONE
            call: list[str] | InferCall | ServiceError
            call = self.parser.parse(body) if v2 is None else self.v2_parser.parse(body, v2, binary)
            del body  # an answered error must not keep a large body alive
            if isinstance(call, ServiceError):
                return await self._error(send, call, headers, v2 is not None)
            texts = call if isinstance(call, list) else call.texts
            model.withdraw(lane)
            announced = False
            timeout_s = request_timeout(timeout, self.settings.request_timeout_s)
            gone = DisconnectProbe(receive)
            try:
                trace = None if span is None else span.get_span_context()
                prediction = await model.predict(texts, timeout_s, gone, lane=lane, trace=trace)
            finally:
                gone.close()
            if isinstance(call, list):
                content = render_predictions(prediction)
            else:
                content = render_infer(call, prediction, self.settings.model_name)
        except ServiceError as exc:
            return await self._error(send, exc, headers, v2 is not None)
        except Exception as exc:  # a bug: answer 500 and keep serving
            log.exception("unhandled error")
            internal = InternalError(f"internal error: {type(exc).__name__}")
            return await self._error(send, internal, headers, v2 is not None)
        finally:
            if announced:
                model.withdraw(lane)
        headers += [_JSON, (b"content-length", str(len(content)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})
        model.shadow(texts, prediction)  # after the answer: a shadow never delays it
        if span is not None:
            span.set_attribute("hc.model.version", prediction.version)
            span.set_attribute("hc.texts", len(texts))
        return 200

    async def _read_body(self, receive: Receive, chunked: bool) -> bytes | None:
        """The whole body, or None if the client left; a chunked body is counted against the limit as it arrives."""
        message = await receive()
        body = message.get("body", b"")
        if message.get("more_body", False):
            chunks = [body]
            seen = len(body)
            while message.get("more_body", False):
                message = await receive()
                chunk = message.get("body", b"")
                seen += len(chunk)
                if chunked and seen > self.max_body:
                    raise PayloadTooLarge(self._too_large())
                chunks.append(chunk)
            body = b"".join(chunks)
        elif chunked and len(body) > self.max_body:
            raise PayloadTooLarge(self._too_large())
        if message["type"] == "http.disconnect":
            return None
        return body

    async def _error(self, send: Send, exc: ServiceError, headers: list[tuple[bytes, bytes]], v2: bool = False) -> int:
        answer = self.errors.render(exc, v2)
        if answer.status == CLIENT_GONE:
            return CLIENT_GONE
        headers += answer.headers
        headers.append((b"content-length", str(len(answer.body)).encode()))
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})
        return answer.status

    async def _dispatch(
        self, scope: Scope, receive: Receive, send: Send, headers: list[tuple[bytes, bytes]], chunked: bool
    ) -> int:
        """The FastAPI app, with this request's headers added to its response; returns the status sent."""
        status = 500
        response_started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                message["headers"] = [*message.get("headers", ()), *headers]
            await send(message)

        try:
            await self.api(scope, self._limited(receive) if chunked else receive, send_with_headers)
        except PayloadTooLarge as exc:  # a chunked body over the limit, raised while the app read it
            if response_started:
                raise
            return await self._error(send, exc, headers, scope["path"].startswith("/v2"))
        return status

    @staticmethod
    def _end_span(span: Any, route: str, method: str, status: int, request_id: str) -> None:
        span.set_attribute("http.request.method", method)
        span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", status)
        span.set_attribute("hc.request_id", request_id)
        if status >= 500 and status != CLIENT_GONE:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR))
        span.end()

    def _too_large(self) -> str:
        return f"request body over {self.max_body} bytes"

    def _limited(self, receive: Receive) -> Receive:
        """Bodies without Content-Length (chunked) are counted as they arrive."""
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise PayloadTooLarge(self._too_large())
            return message

        return limited
