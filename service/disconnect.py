"""Has the client gone? A cheap probe the batcher asks just before a queued request's batch starts.

Under uvicorn (the server ``python -m service`` runs) the ASGI ``receive`` callable is a
bound method of the connection's request cycle, whose ``disconnected`` flag the server sets
the moment the socket closes: reading it costs nothing per request. Under any other ASGI
server (or the test client) a small task waits on ``receive()`` for ``http.disconnect``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

Receive = Callable[[], Awaitable[Any]]


class DisconnectProbe:
    """Call it for "has the client disconnected?"; :meth:`close` once the response is decided."""

    __slots__ = ("_cycle", "_gone", "_task")

    def __init__(self, receive: Receive) -> None:
        cycle = getattr(receive, "__self__", None)
        self._gone = False
        self._task: asyncio.Task[None] | None = None
        if isinstance(getattr(cycle, "disconnected", None), bool):
            self._cycle: Any = cycle
        else:
            self._cycle = None
            self._task = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        # Called only after the whole body was read, so every further message is a disconnect.
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._gone = True
                return

    def __call__(self) -> bool:
        cycle = self._cycle
        return bool(cycle.disconnected) if cycle is not None else self._gone

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
