"""Graceful shutdown that answers every request the server accepted.

uvicorn's own shutdown closes the listening socket on its next tick (up to 0.1 s after the
signal) and then closes every connection that is between two requests at once. A keep-alive
client that had just written its next request on such a connection gets an empty reply or a
reset: the request reached the server and was never answered. Under load (8 clients) that cost
a few requests per shutdown.

Here, on SIGTERM:

1. readiness turns 503 (``on_exit``) and every response from then on carries
   ``Connection: close``, so each client's connection ends cleanly after the response it is
   waiting for, and the client opens a new one for its next request;
2. the listening socket closes right away, so those new connections are refused before the
   server accepts anything;
3. open connections get ``idle_grace_s`` to send a request that is already on its way (and be
   answered) before uvicorn's usual shutdown closes the idle ones, waits for running requests
   (up to ``timeout_graceful_shutdown``) and runs the lifespan shutdown (the batcher drains).
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.inference.model_service import ServiceState

CONNECTION_CLOSE = (b"connection", b"close")


def close_connections_when_draining(app: ASGIApp, state: ServiceState) -> ASGIApp:
    """``app``, adding ``Connection: close`` to every response once ``state.draining`` is set."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if not state.draining or scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), CONNECTION_CLOSE]
            await send(message)

        await app(scope, receive, send_closing)

    return asgi


class DrainingServer(uvicorn.Server):
    """uvicorn.Server with the shutdown above, and a clean exit status 0 after a drain.

    (uvicorn re-raises the captured SIGTERM after shutting down, which would end the process
    with -15 even after a perfect drain.)
    """

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None], idle_grace_s: float = 1.0) -> None:
        super().__init__(config)
        self._on_exit = on_exit
        self._idle_grace_s = idle_grace_s
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True
        if self._loop is not None and not self._loop.is_closed():
            # Runs inside a signal handler: hand the socket work to the loop, which is safe here.
            self._loop.call_soon_threadsafe(self._stop_accepting)

    def _stop_accepting(self) -> None:
        for server in self.servers:
            server.close()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._stop_accepting()
        for sock in sockets or []:
            sock.close()
        loop = asyncio.get_running_loop()
        timeout = self.config.timeout_graceful_shutdown
        deadline = loop.time() + (self._idle_grace_s if timeout is None else min(self._idle_grace_s, timeout))
        while self.server_state.connections and not self.force_exit and loop.time() < deadline:
            await asyncio.sleep(0.01)
        await super().shutdown(sockets)
