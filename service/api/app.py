"""create_app(settings): the server's ASGI app, assembled.

The data plane (:class:`ModelService`) is started and stopped by the FastAPI app's lifespan;
the FastAPI app serves every route but ``POST /predict``; the :class:`Endpoint` in front of it
answers ``POST /predict`` and observes every request.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi_swagger import patch_fastapi
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.routes import router
from service.errors import ErrorRenderer, InternalError, MethodNotAllowed, NotFound, ServiceError
from service.http.endpoint import Endpoint
from service.inference.model_host import ModelHost
from service.inference.model_service import ModelService
from service.inference.predictor import Predictor
from service.observability.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("service")


def create_app(
    settings: Settings,
    predictor: Predictor | None = None,
    model_host: ModelHost | None = None,
    load_in_background: bool = False,
) -> Endpoint:
    """The app for ``settings``; ``predictor`` may be preloaded.

    A preloaded predictor comes with the ``model_host`` it was loaded into (None: in this
    process), and reloads go there too; the app stops that host when it shuts down. With
    ``load_in_background`` (``python -m service``) startup does not wait for the model: the
    server answers liveness at once and readiness turns 200 once the model is loaded and warm.
    """
    if predictor is None and model_host is None and settings.model_process:
        model_host = ModelHost(stall_s=settings.model_stall_s)
    metrics = Metrics()
    model = ModelService(settings, metrics, model_host)
    # Handed over once: afterwards the model service holds the only reference, so a reload frees it.
    handed_over = [predictor] if predictor is not None else []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await model.start(handed_over.pop() if handed_over else None, background=load_in_background)
        try:
            yield
        finally:
            await model.stop()

    api = FastAPI(
        title="Headline classifier",
        version="1.0",
        description="Classifies news headlines into topics with a bidirectional GRU; GET /model names the version.",
        lifespan=lifespan,
        docs_url=None,  # served by fastapi_swagger below, from its packaged assets (no CDN)
        swagger_ui_oauth2_redirect_url=None,
        # No 307 from /predict/ to /predict: its Location would echo the client's Host header.
        redirect_slashes=False,
    )
    patch_fastapi(api, docs_url="/docs", redirect_from_root_to_docs=False)
    api.state.model_service = model
    api.include_router(router)
    _document_limits(api, settings)
    _render_errors(api, ErrorRenderer(settings.retry_after_s))
    return Endpoint(api, model, settings, metrics)


def _render_errors(api: FastAPI, renderer: ErrorRenderer) -> None:
    """One exception handler for the routes: every error goes through the one renderer."""

    def respond(exc: ServiceError) -> Response:
        answer = renderer.render(exc)
        response = Response(answer.body, status_code=answer.status)
        response.raw_headers.extend(answer.headers)
        return response

    @api.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> Response:
        return respond(exc)

    @api.exception_handler(StarletteHTTPException)
    async def _routing_error(request: Request, exc: StarletteHTTPException) -> Response:
        # The router's own answers: no such route, or not with this method.
        kinds: dict[int, type[ServiceError]] = {404: NotFound, 405: MethodNotAllowed}
        kind = kinds.get(exc.status_code)
        if kind is None:
            log.error("unexpected HTTP error %d: %s", exc.status_code, exc.detail)
            return respond(InternalError(f"internal error: HTTP {exc.status_code}"))
        return respond(kind(str(exc.detail), headers=dict(exc.headers or {})))

    @api.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        return respond(InternalError(f"internal error: {type(exc).__name__}"))


def _document_limits(api: FastAPI, settings: Settings) -> None:
    """Put this server's request limits into its OpenAPI schema (they are settings, not constants)."""
    generate = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = generate()
            props = schema["components"]["schemas"]["PredictRequest"]["properties"]
            props["text"]["maxLength"] = settings.max_text_chars
            props["texts"]["maxItems"] = settings.max_texts_per_request
            props["texts"]["items"]["maxLength"] = settings.max_text_chars
        return api.openapi_schema or generate()

    api.openapi = openapi  # type: ignore[method-assign]
