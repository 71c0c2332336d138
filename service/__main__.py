"""``python -m service --artifacts-dir DIR ...``: validate settings, load the model, serve.

The model is loaded before uvicorn starts so that a missing or broken artifact ends the
process with one ``error: ...`` line and exit status 1 instead of a lifespan traceback.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import uvicorn
from pydantic import ValidationError

from service.draining import DrainingServer, close_connections_when_draining
from service.settings import format_validation_error, load_settings


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except ValidationError as exc:
        print(f"error: {format_validation_error(exc)}", file=sys.stderr)
        return 2

    # Imported after settings so `--help` and bad flags answer without loading torch.
    from contract.artifact import ArtifactError
    from service.app import create_app
    from service.logs import setup_logging
    from service.predictor import Predictor, configure_torch_threads

    listener = setup_logging(settings.log_level)
    configure_torch_threads(settings.torch_threads)
    try:
        predictor = Predictor.load(settings.artifacts_dir, settings.version, settings.device)
    except ArtifactError as exc:
        listener.stop()
        print(f"error: cannot load model from {settings.artifacts_dir}: {exc}", file=sys.stderr)
        return 1
    app = create_app(settings, predictor=predictor)
    state = app.state.service

    def on_exit() -> None:
        state.draining = True

    config = uvicorn.Config(
        close_connections_when_draining(app, state),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_s),  # uvicorn takes whole seconds
        lifespan="on",
        server_header=False,
    )
    server = DrainingServer(config, on_exit)
    try:
        server.run()
    finally:
        listener.stop()  # flush the queued log lines
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
