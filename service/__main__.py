"""``python -m service --artifacts-dir DIR ...``: validate settings, load the model, serve.

The model is loaded before uvicorn starts so that a missing or broken artifact ends the
process with one ``error: ...`` line and exit status 1 instead of a lifespan traceback.
"""

from __future__ import annotations

import math
import signal
import sys
from collections.abc import Sequence
from types import FrameType

import uvicorn
from pydantic import ValidationError

from service.settings import format_validation_error, load_settings


class _Server(uvicorn.Server):
    """uvicorn's graceful shutdown, plus: readiness turns 503 at once, and a clean exit status 0.

    (uvicorn re-raises the captured SIGTERM after shutting down, which would end the process
    with -15 even after a perfect drain.)
    """

    def __init__(self, config: uvicorn.Config, on_exit: object) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()  # type: ignore[operator]
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except ValidationError as exc:
        print(f"error: {format_validation_error(exc)}", file=sys.stderr)
        return 2

    # Imported after settings so `--help` and bad flags answer without loading torch.
    from contract.artifact import ArtifactError
    from service.app import create_app
    from service.http_guard import ConnectionLimits, guarded_protocol, raise_open_files_limit
    from service.logs import setup_logging
    from service.predictor import Predictor, configure_torch_threads

    setup_logging(settings.log_level)
    configure_torch_threads(settings.torch_threads)
    try:
        predictor = Predictor.load(settings.artifacts_dir, settings.version, settings.device)
    except ArtifactError as exc:
        print(f"error: cannot load model from {settings.artifacts_dir}: {exc}", file=sys.stderr)
        return 1
    app = create_app(settings, predictor=predictor)
    state = app.state.service

    def on_exit() -> None:
        state.draining = True

    limits = ConnectionLimits(
        max_connections=settings.max_connections,
        header_timeout_s=settings.header_timeout_s,
        body_idle_timeout_s=settings.body_idle_timeout_s,
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
    )
    server = _Server(config, on_exit)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
