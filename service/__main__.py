"""``python -m service --artifacts-dir DIR ...``: validate settings, check the artifact, bind, load, serve.

The artifact is found, verified and rebuilt once before anything binds, so a missing or broken
one ends the process with one ``error: ...`` line and exit status 1. The port is bound before the
model loads: liveness answers 200 and readiness 503 while it loads (up to minutes for a large
model on a busy machine), so an orchestrator neither kills a loading pod nor sends it traffic.
A load that still fails ends the process with the same one line and exit status 1.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import uvicorn
from pydantic import ValidationError

from service.settings import format_validation_error, load_settings


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except ValidationError as exc:
        print(f"error: {format_validation_error(exc)}", file=sys.stderr)
        return 2

    # Imported after settings so `--help` and bad flags answer without loading torch.
    from contract.artifact import ArtifactError, load_artifact, resolve_version
    from service.api.app import create_app
    from service.http.server import (
        ConnectionLimits,
        DrainingServer,
        check_uvicorn,
        guarded_protocol,
        raise_open_files_limit,
    )
    from service.inference.model_host import ModelHost
    from service.inference.predictor import resolve_device
    from service.inference.threads import configure_torch_threads
    from service.observability.logs import setup_logging
    from service.observability.tracing import TracingError, tracing_from_env

    try:
        tracing = tracing_from_env()
    except TracingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    check_uvicorn()
    try:
        resolve_device(settings.device)
        # The whole artifact is read and rebuilt once here (checksums, contents, weights): an
        # unusable one ends the process before it binds. Loading into the model process follows.
        load_artifact(resolve_version(settings.artifacts_dir, settings.version))
    except ArtifactError as exc:
        print(f"error: cannot load model from {settings.artifacts_dir}: {exc}", file=sys.stderr)
        return 1
    listener = setup_logging(settings.log_level)
    configure_torch_threads(settings.torch_threads)  # the model process gets the same budget
    host = ModelHost(stall_s=settings.model_stall_s) if settings.model_process else None
    app = create_app(settings, model_host=host, load_in_background=True, tracing=tracing)

    def on_exit() -> None:
        app.model.draining = True

    limits = ConnectionLimits(
        max_connections=settings.max_connections,
        header_timeout_s=settings.header_timeout_s,
        body_idle_timeout_s=settings.body_idle_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        max_header_bytes=settings.max_header_bytes,
        max_pending_body_bytes=settings.max_pending_body_mb * 1024 * 1024,
        retry_after_s=settings.retry_after_s,
    )
    raise_open_files_limit(settings.max_connections)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=guarded_protocol(limits),
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_s),  # uvicorn takes whole seconds
        lifespan="on",
        server_header=False,
        # Nothing here reads the client's address: rewriting it from X-Forwarded-For would add a
        # middleware layer to every request for nobody.
        proxy_headers=False,
    )
    server = DrainingServer(config, on_exit)
    app.model.on_load_failure = server.stop_soon
    try:
        server.run()
    finally:
        listener.stop()  # flush the queued log lines
    if app.model.load_error is not None:
        print(f"error: cannot load model from {settings.artifacts_dir}: {app.model.load_error}", file=sys.stderr)
        return 1
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
