"""Thin HTTP handlers. Problems are raised as typed ServiceErrors; app.py renders them."""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from contract.artifact import ArtifactError
from service.api.schemas import (
    ErrorResponse,
    HealthResponse,
    ModelInfo,
    PredictRequest,
    PredictResponse,
    ReloadRequest,
    ReloadResponse,
)
from service.disconnect import DisconnectProbe, Receive
from service.errors import (
    ClientClosedRequest,
    InvalidHeader,
    InvalidRequest,
    MalformedBody,
    NotFound,
    ReloadFailed,
    ServiceError,
    ServiceUnavailable,
    Timeout,
    Unauthorized,
    summarize_validation_errors,
)
from service.inference.batching import ClientDisconnected, DeadlineExceeded, Overloaded
from service.inference.gc_tuning import freeze_new_objects
from service.inference.model_host import ModelProcessLost, load_predictor
from service.inference.model_service import ServiceState
from service.inference.predictor import Prediction

log = logging.getLogger("service")
router = APIRouter()

ANNOUNCED = "hc.announced"
_encode = msgspec.json.Encoder().encode


async def get_state(request: Request) -> ServiceState:
    # async on purpose: FastAPI runs a plain-def dependency in a worker thread, per request.
    return request.app.state.service


State = Annotated[ServiceState, Depends(get_state)]

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Body is not valid JSON, or a bad X-Request-Timeout-Ms header",
        413: "Body larger than any valid request",
        422: "Body is valid JSON but not a valid request (empty text, too long, too many, extra fields...)",
        503: "Overloaded or shutting down; retry after the Retry-After header",
        504: "The prediction did not finish within the request timeout (or the client's X-Request-Timeout-Ms)",
    }.items()
}


def withdraw_announcement(request: Request, state: ServiceState) -> None:
    """The request is no longer 'arriving' (see Batcher.announce)."""
    if request.scope.get(ANNOUNCED):
        request.scope[ANNOUNCED] = False
        if state.batcher is not None:
            state.batcher.withdraw()


TIMEOUT_HEADER = "X-Request-Timeout-Ms"
_TIMEOUT_PARAMETER = {
    "name": TIMEOUT_HEADER,
    "in": "header",
    "required": False,
    "description": "This request's deadline in milliseconds (a positive integer), capped by the server's "
    "--request-timeout-s. Not started by then: never computed, 504 with Retry-After. Still running: 504 "
    "at the deadline. A bad value is a 400.",
    "schema": {"type": "integer", "minimum": 1},
}


def request_timeout(value: str | bytes | None, cap_s: float) -> float:
    """Seconds this request may take: the client's ``X-Request-Timeout-Ms`` capped by ``cap_s``; 400 if bad."""
    if value is None:
        return cap_s
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    digits = text.strip(" \t")
    significant = digits.lstrip("0")
    if not (digits.isascii() and digits.isdigit()) or not significant:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise InvalidHeader(
            f"invalid {TIMEOUT_HEADER} header {shown!r}: expected a positive integer number of milliseconds"
        )
    # More than 15 digits is past any cap (and int() of thousands of digits is slow).
    return cap_s if len(significant) > 15 else min(int(significant) / 1000.0, cap_s)


def checked_texts(body: PredictRequest, max_texts: int, max_chars: int) -> list[str]:
    """The request's texts, or InvalidRequest for the runtime limits (the schema states them too)."""
    texts = body.all_texts()
    if len(texts) > max_texts:
        raise InvalidRequest(f"too many texts: {len(texts)} given, at most {max_texts} allowed")
    too_long = [
        {"loc": ["body", "text"] if body.text is not None else ["body", "texts", i], "chars": len(t)}
        for i, t in enumerate(texts)
        if len(t) > max_chars
    ]
    if too_long:
        raise InvalidRequest(f"text too long: {len(too_long)} text(s) over {max_chars} characters", details=too_long)
    return texts


async def predict_texts(state: ServiceState, texts: list[str], timeout_s: float, receive: Receive) -> Prediction:
    """Queue ``texts`` with their deadline and wait; every way it can fail becomes a ServiceError."""
    settings = state.settings
    batcher = state.batcher
    if batcher is None:
        raise ServiceUnavailable("model not loaded yet", headers={"Retry-After": str(settings.retry_after_s)})
    gone = DisconnectProbe(receive)
    try:
        return await batcher.submit(texts, timeout=timeout_s, gone=gone)
    except Overloaded as exc:
        state.metrics.rejected.labels("overloaded").inc()
        raise ServiceUnavailable(str(exc), headers={"Retry-After": str(settings.retry_after_s)}) from None
    except DeadlineExceeded as exc:
        state.metrics.rejected.labels("timeout").inc()
        message = f"prediction did not finish within {timeout_s:g} s"
        headers = {"Retry-After": str(settings.retry_after_s)}
        if exc.computed:
            raise Timeout(f"{message} (its batch was still running)", headers=headers) from None
        raise Timeout(f"{message} (it was still queued and was not computed)", headers=headers) from None
    except ClientDisconnected:
        raise ClientClosedRequest("client disconnected before its batch started") from None
    except ModelProcessLost as exc:
        raise ServiceUnavailable(str(exc), headers={"Retry-After": str(settings.retry_after_s)}) from None
    except Exception as exc:  # noqa: BLE001 - a failed batch: tell its callers, keep serving
        raise ServiceError(f"prediction failed: {type(exc).__name__}: {exc}") from exc
    finally:
        gone.close()


def bearer_token_matches(authorization: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>``, the scheme matched case-insensitively (RFC 9110 11.1)."""
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


async def read_reload_body(request: Request) -> ReloadRequest:
    """The optional reload body, validated only once the caller is known to be the admin."""
    raw = await request.body()
    if not raw.strip():
        return ReloadRequest(version="latest")
    try:
        return ReloadRequest.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise MalformedBody("body is not valid UTF-8 encoded JSON") from None
        message, details = summarize_validation_errors(errors)
        raise InvalidRequest(message, details) from None


def render_predictions(prediction: Prediction) -> bytes:
    classes = prediction.classes
    indices = range(len(classes))
    items = []
    for row, empty in zip(prediction.probabilities.tolist(), prediction.empty, strict=True):
        order = sorted(indices, key=row.__getitem__, reverse=True)
        items.append({"label": classes[order[0]], "probabilities": {classes[i]: row[i] for i in order}, "empty": empty})
    return _encode({"model_version": prediction.version, "predictions": items})


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=ERRORS,
    summary="Classify one headline or a list of headlines",
    openapi_extra={"parameters": [_TIMEOUT_PARAMETER]},
)
async def predict(body: PredictRequest, request: Request, state: State) -> Response:
    """Well-formed requests are answered by the lean path (service/http/endpoint.py) before they reach
    this handler; it serves the rest (and is what /openapi.json describes: both behave alike)."""
    withdraw_announcement(request, state)
    settings = state.settings
    texts = checked_texts(body, settings.max_texts_per_request, settings.max_text_chars)
    timeout_s = request_timeout(request.headers.get(TIMEOUT_HEADER), settings.request_timeout_s)
    prediction = await predict_texts(state, texts, timeout_s, request.receive)
    return Response(render_predictions(prediction), media_type="application/json")


# HEAD too: load balancers probe with it.
@router.head("/health/live", include_in_schema=False)
@router.get("/health/live", response_model=HealthResponse, summary="Liveness: 200 while the process runs")
async def live() -> Response:
    return JSONResponse({"status": "alive"})


@router.head("/health/ready", include_in_schema=False)
@router.get(
    "/health/ready",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse, "description": "Loading, warming up or draining"}},
    summary="Readiness: 200 when the model is loaded and warm and the server is not draining",
)
async def ready(state: State) -> Response:
    predictor = state.predictor
    if state.draining:
        return JSONResponse({"status": "draining", "model_version": predictor and predictor.version}, 503)
    if predictor is None or not state.ready:
        return JSONResponse({"status": "starting", "model_version": predictor and predictor.version}, 503)
    return JSONResponse({"status": "ready", "model_version": predictor.version})


@router.get("/model", response_model=ModelInfo, summary="The model being served: version, categories, metrics")
async def model_info(state: State) -> Response:
    if state.predictor is None:
        raise ServiceUnavailable("model not loaded yet")
    return JSONResponse(state.predictor.describe())


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.post(
    "/admin/reload",
    response_model=ReloadResponse,
    responses={
        400: ERRORS[400],
        401: {"model": ErrorResponse, "description": "Missing or wrong bearer token"},
        404: {"model": ErrorResponse, "description": "Admin endpoint disabled (no admin token configured)"},
        409: {"model": ErrorResponse, "description": "The new version failed to load; the old one keeps serving"},
        422: {"model": ErrorResponse, "description": "Body is not a valid reload request"},
    },
    summary="Load, verify and warm another model version, then swap it in atomically",
    # The body is read by hand, after the token check, so that it is documented here.
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": ReloadRequest.model_json_schema()}},
        }
    },
)
async def reload(state: State, request: Request, authorization: Annotated[str | None, Header()] = None) -> Response:
    token = state.settings.admin_token
    if token is None:
        raise NotFound("admin endpoint disabled: no admin token configured")
    if not bearer_token_matches(authorization, token.get_secret_value()):
        raise Unauthorized("missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
    version = (await read_reload_body(request)).version
    async with state.reload_lock:
        previous = state.predictor
        started = time.monotonic()
        new = None
        try:
            device = str(previous.device) if previous is not None else state.settings.device
            if state.batcher is None:
                raise RuntimeError("the model thread is not running")
            batcher = state.batcher
            # On the model thread, between live batches: torch's thread budget is sized for it, and
            # the model process (when there is one) loads the new version between batches too.
            new = await batcher.run_on_model_thread(
                load_predictor, state.settings.artifacts_dir, version, device, state.model_host
            )
            if state.settings.warmup:
                await batcher.warm_up(new)
        except Exception as exc:  # noqa: BLE001 - any failure leaves the old model serving
            if new is not None and state.batcher is not None:  # loaded, failed to warm up: unload it
                with contextlib.suppress(Overloaded):
                    await state.batcher.run_on_model_thread(new.close)
            state.metrics.reloads.labels("failed").inc()
            reason = str(exc) if isinstance(exc, ArtifactError) else f"{type(exc).__name__}: {exc}"
            log.warning("reload of %r failed: %s", version, reason)
            raise ReloadFailed(f"reload failed, still serving {previous and previous.version}: {reason}") from None
        state.set_predictor(new)
        if previous is not None:
            # Behind every batch that read ``previous`` before the swap: it unloads from the model
            # process only after them.
            with contextlib.suppress(Overloaded):
                await batcher.run_on_model_thread(previous.close)
        freeze_new_objects()
        state.metrics.reloads.labels("ok").inc()
        log.info(
            "reloaded model %s -> %s in %.2fs",
            previous and previous.version,
            new.version,
            time.monotonic() - started,
        )
    return JSONResponse({"previous_version": previous and previous.version, "model_version": new.version})
