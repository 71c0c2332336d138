"""The routes FastAPI serves: health, model info, metrics, admin reload, and the published
description of ``POST /predict``. Each handler is a short hand-off to the data plane
(:class:`ModelService`); problems are raised as ``service.errors`` classes and rendered by
the app's one exception handler.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from service.api.schemas import (
    ErrorResponse,
    HealthResponse,
    ModelInfo,
    PredictRequest,
    PredictResponse,
    ReloadRequest,
    ReloadResponse,
)
from service.errors import InvalidRequest, MalformedBody, NotFound, Unauthorized, summarize_validation_errors
from service.http.endpoint import TIMEOUT_HEADER
from service.inference.model_service import ModelService

router = APIRouter()


async def get_model_service(request: Request) -> ModelService:
    # async on purpose: FastAPI runs a plain-def dependency in a worker thread, per request.
    return request.app.state.model_service


Model = Annotated[ModelService, Depends(get_model_service)]

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

_TIMEOUT_PARAMETER = {
    "name": TIMEOUT_HEADER,
    "in": "header",
    "required": False,
    "description": "This request's deadline in milliseconds (a positive integer), capped by the server's "
    "--request-timeout-s. Not started by then: never computed, 504 with Retry-After. Still running: 504 "
    "at the deadline. A bad value is a 400.",
    "schema": {"type": "integer", "minimum": 1},
}


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=ERRORS,
    summary="Classify one headline or a list of headlines",
    openapi_extra={"parameters": [_TIMEOUT_PARAMETER]},
)
async def predict(body: PredictRequest) -> Response:
    """Publishes ``POST /predict`` in the OpenAPI document. Never runs: service/http/endpoint.py
    answers every ``POST /predict`` before routing, with the rules this schema states."""
    raise RuntimeError("POST /predict is answered by service.http.endpoint, not by the router")


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
async def ready(model: Model) -> Response:
    status, version = model.readiness()
    return JSONResponse({"status": status, "model_version": version}, 200 if status == "ready" else 503)


@router.get("/model", response_model=ModelInfo, summary="The model being served: version, categories, metrics")
async def model_info(model: Model) -> Response:
    return JSONResponse(model.describe())


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(model: Model) -> Response:
    return Response(model.metrics.render(), media_type=CONTENT_TYPE_LATEST)


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
async def reload(model: Model, request: Request, authorization: Annotated[str | None, Header()] = None) -> Response:
    token = model.settings.admin_token
    if token is None:
        raise NotFound("admin endpoint disabled: no admin token configured")
    if not bearer_token_matches(authorization, token.get_secret_value()):
        raise Unauthorized("missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
    version = (await read_reload_body(request)).version
    previous, current = await model.reload(version)
    return JSONResponse({"previous_version": previous, "model_version": current})


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
