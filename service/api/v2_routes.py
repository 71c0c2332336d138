"""The Open Inference Protocol's (V2) health and metadata routes, and the published description
of its infer route. Each handler is a hand-off to the data plane (:class:`ModelService`);
errors are raised as ``service.errors`` classes and rendered ``{"error": "..."}`` by the
app's one exception handler. ``POST .../infer`` is answered by service/http/endpoint.py.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from service.api.routes import TIMEOUT_PARAMETER, Model
from service.api.v2_schemas import (
    InferenceErrorResponse,
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ServerMetadata,
)
from service.errors import UnknownModel
from service.http.v2 import INPUT
from service.inference.model_service import ModelService

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (V2)"])
SERVER_NAME = "headline-classifier"
EXTENSIONS = ["binary_tensor_data"]  # binary inputs; answers are JSON
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": InferenceErrorResponse, "description": text}
    for code, text in {
        400: "Body is not valid JSON, or a bad header",
        404: "Unknown model name or version",
        413: "Body larger than any valid request",
        422: "Not a valid inference request for this model (input name, datatype, shape, text limits)",
        503: "Overloaded, loading or shutting down; retry after the Retry-After header",
        504: "The inference did not finish within the request timeout",
    }.items()
}
_STATUS_ONLY = {"description": "No body: the status is the answer", "content": None}


def _server_version() -> str:
    try:
        return metadata.version("headline-classifier")
    except metadata.PackageNotFoundError:
        return "0"


@router.get("", response_model=ServerMetadata, responses={400: _ERRORS[400]}, summary="Server metadata")
async def server_metadata() -> Response:
    return JSONResponse({"name": SERVER_NAME, "version": _server_version(), "extensions": EXTENSIONS})


@router.head("/health/live", include_in_schema=False)
@router.get("/health/live", summary="Server live: 200 while the process runs", responses={200: _STATUS_ONLY})
async def live() -> Response:
    return Response(status_code=200)


@router.head("/health/ready", include_in_schema=False)
@router.get(
    "/health/ready",
    summary="Server ready: 200 when every served version is loaded and warm and the server is not draining",
    responses={200: _STATUS_ONLY, 503: _STATUS_ONLY},
)
async def ready(model: Model) -> Response:
    return Response(status_code=200 if model.readiness()[0] == "ready" else 503)


def model_metadata(model: ModelService, name: str, version: str | None) -> dict[str, Any]:
    """The metadata of ``name`` (at ``version``, or the default one): tensors, class order, versions."""
    check_name(model, name)
    predictor = model.predictor_for(version)
    return {
        "name": name,
        "versions": model.served_versions(),
        "platform": "pytorch",
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": [-1, len(predictor.classes)],
                "parameters": {"classes": list(predictor.classes)},
            },
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "empty", "datatype": "BOOL", "shape": [-1]},
        ],
        "parameters": {"version": predictor.version, "default_version": model.predictor_for().version},
    }


def check_name(model: ModelService, name: str) -> None:
    served = model.settings.model_name
    if name != served:
        raise UnknownModel(f"unknown model {name[:100]!r}; this server serves {served!r}")


_METADATA: dict[str, Any] = {"response_model": ModelMetadata, "responses": {404: _ERRORS[404], 503: _ERRORS[503]}}


@router.get("/models/{name}", summary="Model metadata (the default version)", **_METADATA)
async def metadata_default(model: Model, name: str) -> Response:
    return JSONResponse(model_metadata(model, name, None))


@router.get("/models/{name}/versions/{version}", summary="Model metadata of one version", **_METADATA)
async def metadata_version(model: Model, name: str, version: str) -> Response:
    return JSONResponse(model_metadata(model, name, version))


def model_ready(model: ModelService, name: str, version: str | None) -> Response:
    check_name(model, name)
    model.predictor_for(version)
    return Response(status_code=200 if model.readiness()[0] == "ready" else 503)


_READY: dict[str, Any] = {"responses": {200: _STATUS_ONLY, 404: _ERRORS[404], 503: _STATUS_ONLY}}


@router.get("/models/{name}/ready", summary="Model ready (the default version)", **_READY)
async def ready_default(model: Model, name: str) -> Response:
    return model_ready(model, name, None)


@router.get("/models/{name}/versions/{version}/ready", summary="Model ready: one version", **_READY)
async def ready_version(model: Model, name: str, version: str) -> Response:
    return model_ready(model, name, version)


_INFER: dict[str, Any] = {
    "response_model": InferenceResponse,
    "responses": _ERRORS,
    "openapi_extra": {"parameters": [TIMEOUT_PARAMETER]},
}


@router.post("/models/{name}/infer", summary="Inference (the default version)", **_INFER)
async def infer_default(name: str, body: InferenceRequest) -> Response:
    """Publishes the infer route in the OpenAPI document. Never runs: service/http/endpoint.py
    answers every ``POST .../infer`` before routing, with the rules this schema states."""
    raise RuntimeError("POST /v2/models/{name}/infer is answered by service.http.endpoint, not by the router")


@router.post("/models/{name}/versions/{version}/infer", summary="Inference with one version", **_INFER)
async def infer_version(name: str, version: str, body: InferenceRequest) -> Response:
    """Published only, as :func:`infer_default`."""
    raise RuntimeError("POST /v2/models/{name}/versions/{version}/infer is answered by service.http.endpoint")
