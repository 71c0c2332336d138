"""Shutdown draining (service/draining.py): accepted requests are answered, new connections refused."""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import socket
import time
from pathlib import Path
from typing import Any

from service.http.draining import CONNECTION_CLOSE, close_connections_when_draining
from service.inference.model_service import ServiceState
from tests.service.live_server import start_server


def _run_wrapped(draining: bool) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    state = ServiceState.__new__(ServiceState)
    state.draining = draining
    asyncio.run(close_connections_when_draining(app, state)({"type": "http"}, receive, send))
    return sent


def test_responses_say_connection_close_only_while_draining() -> None:
    assert CONNECTION_CLOSE not in _run_wrapped(draining=False)[0]["headers"]
    start, body = _run_wrapped(draining=True)
    assert start["headers"] == [(b"content-type", b"text/plain"), CONNECTION_CLOSE]
    assert body["body"] == b"ok"


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except (ConnectionRefusedError, ConnectionResetError):
        # Reset: this probe sat in the listener's accept queue as the listener closed (seen in CI).
        return True
    return False


def test_request_on_an_idle_keep_alive_connection_after_sigterm_is_answered(artifacts_dir: Path) -> None:
    """The race that lost requests: a client reuses its idle keep-alive connection just as the
    server starts shutting down. uvicorn alone closes idle connections at once; here the request
    is answered (with ``Connection: close``) and only new connections are refused."""
    server = start_server(artifacts_dir, "--no-access-log")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/health/live")
        first = conn.getresponse()
        first.read()
        assert first.status == 200 and not first.will_close  # an idle keep-alive connection now

        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not _refused(server.port):  # shutdown has begun: the listener is closed
            assert time.monotonic() < deadline, "listener still accepting 10 s after SIGTERM"
            time.sleep(0.02)

        body_out = json.dumps({"text": "Stocks rally"})
        conn.request("POST", "/predict", body=body_out, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        body = json.loads(response.read())
        assert response.status == 200 and body["predictions"][0]["label"]
        assert response.getheader("connection") == "close"
        conn.close()
        assert server.process.wait(timeout=30) == 0, server.log()[-2000:]
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
