"""Connection-level limits uvicorn does not have: a thin subclass of its httptools protocol.

uvicorn bounds idle keep-alive connections and can 503 requests past ``limit_concurrency``,
but with httptools it has no bound on the request head (URL and headers grow by copying),
no deadline for the head, no idle timeout for a body, no cap on open connections, and no
bound on how many body bytes stalled uploads may pin in memory. This class adds those, at
the byte level where they are cheap, and leaves parsing, ASGI and graceful shutdown to
uvicorn. It also fixes two details of pipelining and early answers:

- a malformed request pipelined behind a valid one is answered 400 only *after* the valid
  request's response went out (uvicorn wrote the 400 at once and closed, so the first
  response was lost though the app logged it as answered);
- a response sent before its request body was read (413) closes the connection instead of
  reading and discarding the rest of the body.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import http
import json
import logging
import resource
from dataclasses import dataclass, field
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("service")

# Body bytes a request may hold before the shared budget is consulted: a whole typical request
# always gets through, however many uploads are stalled elsewhere.
FREE_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class ConnectionLimits:
    """The per-server limits (from Settings; see the README configuration table)."""

    max_connections: int = 2048
    header_timeout_s: float = 10.0
    body_idle_timeout_s: float = 10.0
    max_header_bytes: int = 65536
    max_pending_body_bytes: int = 128 * 1024 * 1024
    retry_after_s: int = 1


def _load_malloc_trim() -> Any:
    """glibc's malloc_trim, or None (musl, macOS): returns freed heap pages to the OS."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _load_malloc_trim()
# After bodies of this many bytes were held and all are released, give the memory back: body
# chunks are freed in an order that leaves glibc's heap fragmented, and RSS would stay high
# after a burst of large or stalled uploads is gone.
TRIM_AFTER_BYTES = 16 * 1024 * 1024
TRIM_DELAY_S = 1.0


@dataclass
class BodyBudget:
    """Request-body bytes received for requests not yet answered, across all connections.

    Counted from the first body byte until the response is complete, because the app holds a
    body (and copies of it) until then: complete bodies can pin memory as well as stalled ones.
    """

    pending: int = 0
    high_water: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    _trim: asyncio.TimerHandle | None = None

    def hold(self, size: int) -> None:
        self.pending += size
        self.high_water = max(self.high_water, self.pending)

    def release(self, size: int) -> None:
        self.pending -= size
        if self.pending == 0 and self.high_water >= TRIM_AFTER_BYTES and self._trim is None and _MALLOC_TRIM:
            # Once the burst is over, not after every body of it: a trim walks the whole heap.
            self._trim = asyncio.get_running_loop().call_later(TRIM_DELAY_S, self._trim_if_quiet)

    def _trim_if_quiet(self) -> None:
        self._trim = None
        if self.pending < TRIM_AFTER_BYTES // 4:
            self.high_water = self.pending
            _MALLOC_TRIM(0)
        else:  # a new burst is under way; look again later
            self._trim = asyncio.get_running_loop().call_later(TRIM_DELAY_S, self._trim_if_quiet)

    def count_refusal(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1


_KINDS = {400: "malformed_request", 408: "timeout", 414: "uri_too_long", 431: "headers_too_large", 503: "overloaded"}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> bytes:
    """A complete ``connection: close`` HTTP/1.1 response in the service's JSON error shape."""
    kind = _KINDS.get(status) or http.HTTPStatus(status).phrase.lower().replace(" ", "_")
    body = json.dumps({"error": {"type": kind, "message": message, "details": []}}).encode()
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}", "content-type: application/json"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines += [f"content-length: {len(body)}", "connection: close", "", ""]
    return "\r\n".join(lines).encode("ascii") + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of :class:`ConnectionLimits`.

    Use :func:`guarded_protocol` to get a subclass bound to one server's limits and budget.
    """

    limits: ConnectionLimits = ConnectionLimits()
    budget: BodyBudget = BodyBudget()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False  # a request has begun and its headers are not complete yet
        self._head_bytes = 0
        self._head_started = 0.0
        self._line_done = False  # the request line (URL) is complete: 431 rather than 414
        self._head_timer: asyncio.TimerHandle | None = None
        self._awaiting_body = False
        self._body_timer: asyncio.TimerHandle | None = None
        self._last_read = 0.0
        self._body_held = 0  # this request's bytes counted in the shared budget
        self._fed_body = 0
        self._failed = False
        self._deferred: bytes | None = None  # error to send once earlier responses are out

    # -- connection ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self.budget.count_refusal("connections")
            self._failed = True
            retry = {"retry-after": str(self.limits.retry_after_s)}
            transport.write(error_response(503, "too many open connections", retry))
            transport.close()
            return
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        self._release_body()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._failed:
            return
        self._unset_keepalive_if_required()
        now = self._last_read = self.loop.time()
        self._fed_body = 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            log.warning("invalid HTTP request received")
            self._fail_head(400, "invalid HTTP request")
            return
        if self._failed:
            return
        if self._in_head:
            # Only a head left incomplete by this chunk needs a deadline (most arrive whole).
            self._head_bytes += len(data) - self._fed_body
            self._line_done = self._line_done or b"\n" in data
            if self._head_timer is None:
                remaining = self.limits.header_timeout_s - (now - self._head_started)
                self._head_timer = self.loop.call_later(max(remaining, 0.0), self._head_timeout)
            if self._head_bytes > self.limits.max_header_bytes:
                self.budget.count_refusal("header_size")
                if self._line_done:
                    self._fail_head(431, f"request headers over {self.limits.max_header_bytes} bytes")
                else:
                    self._fail_head(414, f"request line over {self.limits.max_header_bytes} bytes")
        elif self._awaiting_body and self._body_timer is None:
            self._body_timer = self.loop.call_later(self.limits.body_idle_timeout_s, self._body_idle)

    # -- parser callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._in_head, self._head_started = True, self.loop.time()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._awaiting_body = True
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._fed_body += len(body)
        if self._failed:
            return
        super().on_body(body)
        self._body_held += len(body)
        self.budget.hold(len(body))
        if self._body_held > FREE_BODY_BYTES and self.budget.pending > self.limits.max_pending_body_bytes:
            self.budget.count_refusal("body_budget")
            log.warning("request body refused: pending bodies hold over %d bytes", self.limits.max_pending_body_bytes)
            self._fail_body(503, "server busy with other request bodies", retry=True)

    def on_message_complete(self) -> None:
        self._head_bytes, self._line_done = 0, False
        self._awaiting_body = False
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self._awaiting_body and self.cycle is not None and self.cycle.response_complete:
            # Answered before the body was read (e.g. 413): do not read the rest of it.
            self.transport.close()
        self._release_body()  # the app is done with the body: it no longer holds memory
        super().on_response_complete()
        if self._deferred is not None and not self.pipeline and (self.cycle is None or self.cycle.response_complete):
            self._write_and_close(self._deferred)

    # -- failures ------------------------------------------------------------------------
    def _fail_head(self, status: int, message: str) -> None:
        """A new request's head is bad: answer it after every earlier response, then close."""
        self._failed = True
        self._cancel_timers()
        self.flow.pause_reading()
        response = error_response(status, message)
        if self.pipeline or (self.cycle is not None and not self.cycle.response_complete):
            self._deferred = response
        else:
            self._write_and_close(response)

    def _fail_body(self, status: int, message: str, retry: bool = False) -> None:
        """The request being received is cut off: answer it if nothing was sent yet, then close."""
        self._failed = True
        self._cancel_timers()
        self._release_body()
        headers = {"retry-after": str(self.limits.retry_after_s)} if retry else None
        if self.cycle is not None and not self.cycle.response_started:
            self.cycle.disconnected = True  # the app sees a disconnect; its own answer is dropped
            self.cycle.message_event.set()
            self._write_and_close(error_response(status, message, headers))
        else:
            self.transport.close()

    def _write_and_close(self, response: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._failed:
            return
        if self._in_head:
            self.budget.count_refusal("header_timeout")
            self._fail_head(408, f"request headers not received within {self.limits.header_timeout_s:g} s")
        elif self.cycle is None:  # opened, and not one byte of a request since
            self.budget.count_refusal("header_timeout")
            self._failed = True
            self.transport.close()
        # else: between requests, uvicorn's keep-alive timeout is in charge

    def _body_idle(self) -> None:
        self._body_timer = None
        if self._failed or not self._awaiting_body:
            return
        idle = self.loop.time() - self._last_read
        if self.flow.read_paused:  # we are not reading (the app is busy): not the client's stall
            idle = 0.0
            self._last_read = self.loop.time()
        if idle < self.limits.body_idle_timeout_s:
            self._body_timer = self.loop.call_later(self.limits.body_idle_timeout_s - idle, self._body_idle)
            return
        self.budget.count_refusal("body_timeout")
        self._fail_body(408, f"request body stalled for {self.limits.body_idle_timeout_s:g} s")

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None

    def _release_body(self) -> None:
        if self._body_held:
            self.budget.release(self._body_held)
            self._body_held = 0


def guarded_protocol(limits: ConnectionLimits, budget: BodyBudget | None = None) -> type[GuardedHttpToolsProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` bound to one server's limits and shared budget."""
    attrs = {"limits": limits, "budget": budget or BodyBudget()}
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), attrs)


def raise_open_files_limit(max_connections: int) -> None:
    """Let the process hold ``max_connections`` sockets plus its own files (soft limit up to the hard one).

    With the common soft limit of 1024, accept() fails with EMFILE long before the cap, and
    asyncio then stops accepting anyone for a second at a time.
    """
    wanted = max_connections + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < wanted:
            log.warning("open-files limit %d is below max_connections + 256 (%d)", target, wanted)
