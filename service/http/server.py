"""Everything that touches uvicorn's internals, in one module: the guarded httptools protocol,
the draining server and the disconnect probe. :func:`check_uvicorn` names every private
attribute used here and fails loudly on a uvicorn that lacks one; pyproject.toml pins the
range the tests ran on.

Connection-level limits uvicorn does not have: a thin subclass of its httptools protocol.

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
import inspect
import logging
import resource
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.errors import (
    ErrorRenderer,
    HeadersTooLarge,
    MalformedRequest,
    Overloaded,
    RequestTimedOut,
    ServiceError,
    UriTooLong,
)

log = logging.getLogger("service")

# At the connection cap, a connection idle this long is shed before a slow upload is.
SHED_IDLE_AFTER_S = 1.0
# Body bytes a request may hold before the shared budget is consulted: a whole typical request
# always gets through, however many uploads are stalled elsewhere.
FREE_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class ConnectionLimits:
    """The per-server limits (from Settings; see the README configuration table)."""

    max_connections: int = 2048
    header_timeout_s: float = 10.0
    body_idle_timeout_s: float = 10.0
    body_timeout_s: float = 15.0
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


class OneWriteTransport:
    """The transport a request cycle writes through: a response's head waits for its body.

    uvicorn writes the status line and headers with one ``write`` and the body with another,
    and uvloop sends each at once: two ``send`` calls per response, and two reads for the
    client. Here the head is held until the first body write (or the response's end, the
    connection's close, or the end of this loop iteration at the latest), and both leave in
    one ``writelines``, which uvloop sends with one system call and no copy.
    """

    __slots__ = ("_transport", "_loop", "_head")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.writelines((head, data))
        elif data.startswith(b"HTTP/1.1 ") and not data.startswith(b"HTTP/1.1 100 "):  # a response head
            self._head = data
            self._loop.call_soon(self.flush)  # a head is never held past this iteration
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Send a held head now."""
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of :class:`ConnectionLimits`.

    Use :func:`guarded_protocol` to get a subclass bound to one server's limits and budget.
    """

    limits: ConnectionLimits = ConnectionLimits()
    budget: BodyBudget = BodyBudget()
    errors: ErrorRenderer = ErrorRenderer(1)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False  # a request has begun and its headers are not complete yet
        self._head_bytes = 0
        self._head_started = 0.0
        self._line_done = False  # the request line (URL) is complete: 431 rather than 414
        self._head_timer: asyncio.TimerHandle | None = None
        self._awaiting_body = False
        self._body_timer: asyncio.TimerHandle | None = None
        self._total_timer: asyncio.TimerHandle | None = None
        self._last_read = 0.0
        self._request_bytes = 0  # bytes of the request being received, for picking the slowest
        self._body_held = 0  # this request's bytes counted in the shared budget
        self._fed_body = 0
        self._failed = False
        self._deferred: bytes | None = None  # error to send once earlier responses are out
        self._writer: OneWriteTransport | None = None

    # -- connection ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._writer = OneWriteTransport(transport, self.loop)
        self._last_read = self.loop.time()
        if len(self.connections) > self.limits.max_connections:
            victim = self._victim()
            if victim is None:  # every other connection has a request the app is working on
                self.budget.count_refusal("connections")
                self._failed = True
                transport.write(self.errors.raw(Overloaded("too many open connections")))
                transport.close()
                return
            victim._shed()
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timeout)

    def _victim(self) -> GuardedHttpToolsProtocol | None:
        """At the connection cap, who makes room: a connection idle for a while (the longest),
        else the one receiving its request most slowly, else the longest idle. Never one whose
        request the app is working on."""
        now = self.loop.time()
        idle: GuardedHttpToolsProtocol | None = None
        slow: GuardedHttpToolsProtocol | None = None
        slow_rate = float("inf")
        for other in self.connections:
            if other is self or not isinstance(other, GuardedHttpToolsProtocol) or other._failed:
                continue
            if other._in_head or other._awaiting_body:
                rate = other._request_bytes / max(now - other._head_started, 1e-3)
                if rate < slow_rate:
                    slow, slow_rate = other, rate
            elif (other.cycle is None or other.cycle.response_complete) and not other.pipeline:
                if idle is None or other._last_read < idle._last_read:
                    idle = other
        if idle is not None and now - idle._last_read >= SHED_IDLE_AFTER_S:
            return idle
        return slow or idle

    def _shed(self) -> None:
        self.budget.count_refusal("shed")
        shed = Overloaded("too many open connections: this slow or idle connection was closed to serve others")
        if self._in_head:
            self._fail_head(shed)
        elif self._awaiting_body:
            self._fail_body(shed)
        else:
            self._failed = True
            self._cancel_timers()
            self.transport.close()

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
            self._fail_head(MalformedRequest("invalid HTTP request"))
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
                    self._fail_head(HeadersTooLarge(f"request headers over {self.limits.max_header_bytes} bytes"))
                else:
                    self._fail_head(UriTooLong(f"request line over {self.limits.max_header_bytes} bytes"))
        elif self._awaiting_body and self._body_timer is None:
            self._body_timer = self.loop.call_later(self.limits.body_idle_timeout_s, self._body_idle)
        if self._in_head or self._awaiting_body:
            # A request left incomplete by this chunk: however steadily it drips, it has
            # body_timeout_s from its first byte (most requests arrive whole and never get here).
            self._request_bytes += len(data)
            if self._total_timer is None:
                remaining = self.limits.body_timeout_s - (now - self._head_started)
                self._total_timer = self.loop.call_later(max(remaining, 0.0), self._total_timeout)

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
        if self.cycle is not None and self._writer is not None:
            self.cycle.transport = self._writer  # type: ignore[assignment]

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
            self._fail_body(Overloaded("server busy with other request bodies"))

    def on_message_complete(self) -> None:
        self._head_bytes, self._line_done = 0, False
        self._awaiting_body = False
        self._request_bytes = 0
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if self._total_timer is not None:
            self._total_timer.cancel()
            self._total_timer = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self._writer is not None:
            self._writer.flush()  # a response without a body write (HEAD) is complete now
        if self._awaiting_body and self.cycle is not None and self.cycle.response_complete:
            # Answered before the body was read (e.g. 413): do not read the rest of it.
            self.transport.close()
        self._release_body()  # the app is done with the body: it no longer holds memory
        self._last_read = self.loop.time()  # idle from now on, for picking who makes room at the cap
        super().on_response_complete()
        if self._deferred is not None and not self.pipeline and (self.cycle is None or self.cycle.response_complete):
            self._write_and_close(self._deferred)

    # -- failures ------------------------------------------------------------------------
    def _fail_head(self, error: ServiceError) -> None:
        """A new request's head is bad: answer it after every earlier response, then close."""
        self._failed = True
        self._cancel_timers()
        self.flow.pause_reading()
        response = self.errors.raw(error)
        if self.pipeline or (self.cycle is not None and not self.cycle.response_complete):
            self._deferred = response
        else:
            self._write_and_close(response)

    def _fail_body(self, error: ServiceError) -> None:
        """The request being received is cut off: answer it if nothing was sent yet, then close."""
        self._failed = True
        self._cancel_timers()
        self._release_body()
        if self.cycle is not None and not self.cycle.response_started:
            self.cycle.disconnected = True  # the app sees a disconnect; its own answer is dropped
            self.cycle.message_event.set()
            self._write_and_close(self.errors.raw(error))
        else:
            (self._writer or self.transport).close()  # what was sent of the response goes first

    def _write_and_close(self, response: bytes) -> None:
        if self._writer is not None:
            self._writer.flush()
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._failed:
            return
        if self._in_head:
            self.budget.count_refusal("header_timeout")
            self._fail_head(RequestTimedOut(f"request headers not received within {self.limits.header_timeout_s:g} s"))
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
        self._fail_body(RequestTimedOut(f"request body stalled for {self.limits.body_idle_timeout_s:g} s"))

    def _total_timeout(self) -> None:
        self._total_timer = None
        if self._failed or not (self._in_head or self._awaiting_body):
            return
        self.budget.count_refusal("request_timeout")
        late = RequestTimedOut(f"request not received within {self.limits.body_timeout_s:g} s")
        if self._in_head:
            self._fail_head(late)
        else:
            self._fail_body(late)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer, self._total_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self._total_timer = None

    def _release_body(self) -> None:
        if self._body_held:
            self.budget.release(self._body_held)
            self._body_held = 0


def guarded_protocol(limits: ConnectionLimits, budget: BodyBudget | None = None) -> type[GuardedHttpToolsProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` bound to one server's limits and shared budget."""
    attrs = {"limits": limits, "budget": budget or BodyBudget(), "errors": ErrorRenderer(limits.retry_after_s)}
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


# -- draining ------------------------------------------------------------------------------
class DrainingServer(uvicorn.Server):
    """uvicorn.Server with a shutdown that answers every request the server accepted.

    uvicorn's own shutdown closes the listening socket on its next tick (up to 0.1 s after the
    signal) and then closes every connection that is between two requests at once: a keep-alive
    client that had just written its next request gets an empty reply or a reset. Here, on
    SIGTERM: readiness turns 503 (``on_exit``) and every response from then on carries
    ``Connection: close`` (the endpoint adds it while the model service drains); the listening
    socket closes right away; open connections get ``idle_grace_s`` to send a request already on
    its way before uvicorn's usual shutdown closes the idle ones, waits for running requests and
    runs the lifespan shutdown. Exit status is 0 after a clean drain (uvicorn re-raises the
    captured SIGTERM, which would end the process with -15).
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

    def stop_soon(self) -> None:
        """Shut down as on SIGTERM, from inside the server (the model could not be loaded)."""
        self._on_exit()
        self.should_exit = True

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


# -- disconnects ---------------------------------------------------------------------------
Receive = Callable[[], Awaitable[Any]]


class DisconnectProbe:
    """Call it for "has the client disconnected?" (the batcher asks just before a batch starts).

    Under uvicorn the ASGI ``receive`` callable is a bound method of the connection's request
    cycle, whose ``disconnected`` flag the server sets the moment the socket closes: reading it
    costs nothing per request. Under any other ASGI server (or the test client) a small task
    waits on ``receive()`` for ``http.disconnect``; :meth:`close` it once the answer is decided.
    """

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
        # Started only after the whole body was read, so every further message is a disconnect.
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


# -- compatibility -------------------------------------------------------------------------
_PROTOCOL_INTERNALS = (
    "parser",
    "cycle",
    "flow",
    "pipeline",
    "connections",
    "transport",
    "loop",
    "_unset_keepalive_if_required",
    "_should_upgrade",
    "handle_websocket_upgrade",
    "_unsupported_upgrade_warning",
    "on_message_begin",
    "on_headers_complete",
    "on_body",
    "on_message_complete",
    "on_response_complete",
)
_CYCLE_INTERNALS = ("disconnected", "message_event", "response_complete", "response_started", "transport")
_SERVER_INTERNALS = ("servers", "server_state", "force_exit", "should_exit", "startup", "shutdown", "handle_exit")


def check_uvicorn() -> None:
    """Raise RuntimeError naming what is missing if this uvicorn lacks an internal used above."""
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    missing = [f"HttpToolsProtocol.{a}" for a in _PROTOCOL_INTERNALS if not _has(HttpToolsProtocol, a)]
    missing += [f"RequestResponseCycle.{a}" for a in _CYCLE_INTERNALS if not _has(RequestResponseCycle, a)]
    missing += [f"Server.{a}" for a in _SERVER_INTERNALS if not _has(uvicorn.Server, a)]
    if missing:
        raise RuntimeError(
            f"uvicorn {uvicorn.__version__} is not a version this service supports "
            f"(see pyproject.toml); missing: {', '.join(missing)}"
        )


def _has(cls: type, name: str) -> bool:
    """A class attribute or method, or an attribute the class's own code sets (read from its source)."""
    if hasattr(cls, name):
        return True
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return False
    return f"self.{name} =" in source or f"self.{name}:" in source
