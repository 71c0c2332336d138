"""Shutdown draining (DrainingServer, service/http/server.py): accepted requests answered, new ones refused."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import time
from pathlib import Path

from fastapi.testclient import TestClient

from tests.service.live_server import start_server


def test_responses_say_connection_close_only_while_draining(client: TestClient) -> None:
    model = client.app.model  # type: ignore[attr-defined]
    assert "connection" not in client.get("/health/live").headers
    model.draining = True
    try:
        for response in (client.get("/health/live"), client.post("/predict", json={"text": "Stocks rally"})):
            assert response.headers["connection"] == "close"
        assert client.get("/health/ready").status_code == 503
    finally:
        model.draining = False


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
