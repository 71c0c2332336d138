"""The HTTP stack's own floor: uvicorn + httptools + uvloop with nothing of this service in it.

An ASGI app that reads the whole request body and answers a fixed, ``/predict``-shaped JSON
document. Whatever ``POST /predict`` costs beyond this app is the service's own work (parsing,
batching, the model hand-off, rendering, the access log), which is what the serving benchmark
compares against it.

    python -m bench.floor_app --port 8100
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

ANSWER = (
    b'{"model_version":"floor","predictions":[{"label":"Business","probabilities":'
    b'{"Business":0.6577548384666443,"World":0.33166247606277466,"Sports":0.006925578229129314,'
    b'"Sci/Tech":0.0036570627707988024},"empty":false}]}'
)
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]


async def app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    """Read the body to its end, then send the fixed answer."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_app", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args(argv)
    import uvicorn

    uvicorn.run(
        app, host=args.host, port=args.port, http="httptools", loop="uvloop", access_log=False, log_level="warning"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
