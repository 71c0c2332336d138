"""JSON logs through stdlib logging: one object per line on stderr, written by a background thread.

Loggers put records on a queue (:class:`DeferredQueueHandler`); a
:class:`logging.handlers.QueueListener` thread formats them and writes them to stderr.
The access log goes further (:class:`AccessBuffer`): the event loop appends a plain tuple
per request and hands the logging thread one pre-encoded burst every ``ACCESS_FLUSH_S``.
A LogRecord per request cost ~25 us of event-loop time; a queue put per request cost a
thread wake-up and a GIL switch per request (docs/decisions: the access log).
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

import msgspec

from service.inference.threads import name_os_thread

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "color_message"}
_encode = msgspec.json.Encoder(enc_hook=str).encode


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:  # rendered early by DeferredQueueHandler
            data["exception"] = record.exc_text
        return _encode(data).decode()


class DeferredQueueHandler(logging.handlers.QueueHandler):
    """Enqueue the record as it is: the stock QueueHandler formats it first, on the caller's thread.

    Safe here because records never leave the process; only an exception's traceback is
    rendered now (the frames it refers to may be gone by the time the listener runs).
    """

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


ACCESS_LOGGER = "service.access"
ACCESS_FLUSH_S = 0.01  # access lines reach stderr at most this much later, in bursts
# Log output handed to the logging thread and not yet written, access lines and every other
# record together: past this (stderr not draining: a stalled log collector, a full pipe), new
# output is dropped and counted, not queued.
ACCESS_BACKLOG_BYTES = 8 << 20
# What a record is counted as in the backlog, besides its message and traceback.
_RECORD_OVERHEAD_BYTES = 512  # a queued LogRecord measured ~450 bytes (tracemalloc)
AccessWriter = Callable[..., None]  # (method, path, status, latency_ms, request_id, trace_id=None)
_access_buffer: AccessBuffer | None = None  # set by setup_logging


class AccessLine(msgspec.Struct, gc=False):
    """One access-log line; field order is the JSON key order JsonFormatter gives the same record."""

    ts: str
    level: str
    logger: str
    message: str
    method: str
    path: str
    status: int
    latency_ms: float
    request_id: str
    trace_id: str | msgspec.UnsetType = msgspec.UNSET  # with tracing on only (an unset field is not written)


_MILLIS = [f".{ms:03d}Z" for ms in range(1000)]  # the timestamp's tail, looked up rather than formatted


class AccessBuffer:
    """Access lines collected on the event loop and handed to the logging thread in bursts.

    A request costs one ``list.append``. The first line of a burst arms a ``call_later``
    timer; when it fires (``ACCESS_FLUSH_S`` later) the whole burst is encoded by one msgspec
    call and put on the listener's queue as one bytes object, which the logging thread
    writes with one ``write``: a queue put per request, each line built by the logging
    thread, cost several times more CPU (BENCHMARKS.md has the current A/B). The write
    stays off the loop, so a stderr pipe that is slow to drain never stalls it.
    """

    def __init__(self, put: Callable[[Any], None]) -> None:
        self._put = put
        self._pending: list[tuple[float, str, str, int, float, str, str | None]] = []
        self._second = -1
        self._second_text = ""
        self._encode_lines = msgspec.json.Encoder().encode_lines
        self._loop_thread: int | None = None
        self.handed_bytes = 0  # only the loop's thread adds to this ...
        self.written_bytes = 0  # ... and only the logging thread to this: no lock needed
        self.record_bytes = 0  # other records' bytes handed over, from any thread (under the lock)
        self._record_lock = threading.Lock()
        self.dropped_lines = 0
        self.dropped_records = 0
        self._unreported_drops = 0
        self._unreported_records = 0

    def backlog(self) -> int:
        """Bytes handed to the logging thread and not written yet, all output together."""
        return self.handed_bytes + self.record_bytes - self.written_bytes

    def admit(self, record: logging.LogRecord) -> bool:
        """Count a record into the backlog, or refuse it (counted) when the backlog is full."""
        size = _RECORD_OVERHEAD_BYTES + len(str(record.msg)) + len(record.exc_text or "")
        with self._record_lock:
            if self.backlog() + size > ACCESS_BACKLOG_BYTES:
                self.dropped_records += 1
                self._unreported_records += 1
                return False
            self.record_bytes += size
        record._hc_size = size  # written off by the logging thread; "_" keeps it out of the JSON
        if self._unreported_records and record.levelno < logging.CRITICAL:
            self._report_record_drops()
        return True

    def _report_record_drops(self) -> None:
        with self._record_lock:
            dropped, self._unreported_records = self._unreported_records, 0
        if dropped:
            self._put(
                logging.LogRecord(
                    "service",
                    logging.WARNING,
                    __file__,
                    0,
                    "log: %d records dropped while stderr was not draining (backlog over %d bytes)",
                    (dropped, ACCESS_BACKLOG_BYTES),
                    None,
                )
            )

    def write(
        self, method: str, path: str, status: int, latency_ms: float, request_id: str, trace_id: str | None = None
    ) -> None:
        pending = self._pending
        line = (time.time(), method, path, status, latency_ms, request_id, trace_id)
        if not pending:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not on an event loop: no timer to arm, hand the line over now
                self._hand_over(self._encode([line]), 1)
                return
            self._loop_thread = threading.get_ident()
            loop.call_later(ACCESS_FLUSH_S, self.flush)
        pending.append(line)

    def flush(self) -> None:
        """Hand what is pending to the logging thread. Runs on the event loop (the timer, a log
        record emitted there), or at exit once the loop has stopped: never beside an append."""
        if self._pending:
            lines, self._pending = self._pending, []
            self._hand_over(self._encode(lines), len(lines))

    def _hand_over(self, data: bytes, lines: int) -> None:
        if self.backlog() + len(data) > ACCESS_BACKLOG_BYTES:
            self.dropped_lines += lines
            self._unreported_drops += lines
            return
        if self._unreported_drops:  # stderr drains again: say what is missing, in line
            self._put(
                logging.LogRecord(
                    ACCESS_LOGGER,
                    logging.WARNING,
                    __file__,
                    0,
                    "access log: %d lines dropped while stderr was not draining (backlog over %d bytes)",
                    (self._unreported_drops, ACCESS_BACKLOG_BYTES),
                    None,
                )
            )
            self._unreported_drops = 0
        self.handed_bytes += len(data)
        self._put(data)

    def flush_if_on_loop(self) -> None:
        """Before another record from the loop's thread: keep the stream in order."""
        if self._pending and threading.get_ident() == self._loop_thread:
            self.flush()

    def _encode(self, lines: list[tuple[float, str, str, int, float, str, str | None]]) -> bytes:
        """JSON lines for a burst. ``ts`` is ``2026-11-29T20:16:10.265Z``: ``strftime`` once per
        second, the milliseconds from a table (a formatted ``ts`` per line was a third of the
        access log's event-loop time in a py-spy profile at 256 clients)."""
        out = []
        second, text, millis = self._second, self._second_text, _MILLIS
        unset = msgspec.UNSET
        for created, method, path, status, latency, rid, trace in lines:
            whole = int(created)
            if whole != second:
                second, text = whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
            ts = text + millis[int((created - whole) * 1000)]
            out.append(
                AccessLine(ts, "info", ACCESS_LOGGER, "request", method, path, status, latency, rid, trace or unset)
            )
        self._second, self._second_text = second, text
        return self._encode_lines(out)


class _Listener(logging.handlers.QueueListener):
    """The logging thread: LogRecords go to the handler; bytes (a burst of encoded access
    lines) are written as they are, under the handler's lock."""

    def __init__(
        self, records: queue.SimpleQueue[Any], handler: logging.StreamHandler[Any], access: AccessBuffer
    ) -> None:
        super().__init__(records, handler)
        self._handler = handler
        self._access = access

    def handle(self, record: Any) -> None:
        if isinstance(record, bytes):
            handler = self._handler
            with handler.lock:  # type: ignore[union-attr]
                stream = handler.stream
                raw = getattr(stream, "buffer", None)  # stderr: skip the text layer's decode and re-encode
                if raw is not None:
                    stream.flush()
                    raw.write(record)
                    raw.flush()
                else:
                    stream.write(record.decode())
                    stream.flush()
            self._access.written_bytes += len(record)
            return
        super().handle(record)
        self._access.written_bytes += getattr(record, "_hc_size", 0)

    def _monitor(self) -> None:  # the thread's body (QueueListener.start runs it)
        name_os_thread("hc-log")
        super()._monitor()  # type: ignore[misc]  # not in the stubs

    def stop(self) -> None:
        self._access.flush()  # the loop has stopped: what its timer did not hand over yet
        super().stop()


class _QueueHandler(DeferredQueueHandler):
    """Flushes the access lines the loop holds before a record from the loop's own thread."""

    def __init__(self, records: queue.SimpleQueue[Any], access: AccessBuffer) -> None:
        super().__init__(records)
        self._access = access

    def enqueue(self, record: logging.LogRecord) -> None:
        self._access.flush_if_on_loop()
        if self._access.admit(record):
            super().enqueue(record)


def dropped_access_lines() -> int:
    """Access lines dropped because stderr was not draining (0 without :func:`setup_logging`)."""
    return _access_buffer.dropped_lines if _access_buffer is not None else 0


def dropped_log_records() -> int:
    """Other log records dropped because stderr was not draining (0 without :func:`setup_logging`)."""
    return _access_buffer.dropped_records if _access_buffer is not None else 0


def access_writer() -> AccessWriter:
    """``write(method, path, status, latency_ms, request_id)``: one access-log line per call.

    With :func:`setup_logging` in effect it is :meth:`AccessBuffer.write`; otherwise (tests,
    embedding) an ordinary ``logging`` call on the ``service.access`` logger.
    """
    logger = logging.getLogger(ACCESS_LOGGER)
    buffer = _access_buffer
    if buffer is not None:
        if not logger.isEnabledFor(logging.INFO):
            return lambda method, path, status, latency_ms, request_id, trace_id=None: None
        return buffer.write

    def logged(
        method: str, path: str, status: int, latency_ms: float, request_id: str, trace_id: str | None = None
    ) -> None:
        if logger.isEnabledFor(logging.INFO):
            extra = {"method": method, "path": path, "status": status, "latency_ms": latency_ms}
            traced = {"trace_id": trace_id} if trace_id else {}
            logger.info("request", extra={**extra, "request_id": request_id, **traced})

    return logged


def setup_logging(level: str, stream: TextIO | None = None) -> logging.handlers.QueueListener:
    """Route our loggers and uvicorn's through one queued JSON handler (called by __main__ only).

    Returns the started listener; stop it at exit to flush what is still queued.
    """
    global _access_buffer
    records: queue.SimpleQueue[Any] = queue.SimpleQueue()
    handler_out = logging.StreamHandler(stream or sys.stderr)
    handler_out.setFormatter(JsonFormatter())
    access = AccessBuffer(records.put)
    listener = _Listener(records, handler_out, access)
    handler = _QueueHandler(records, access)
    for name in ("service", "contract", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler] if name != "uvicorn.error" else []
        logger.setLevel(level.upper())
        logger.propagate = name == "uvicorn.error"
    logging.getLogger("uvicorn.access").disabled = True  # we log requests ourselves
    _access_buffer = access
    listener.start()
    return listener
