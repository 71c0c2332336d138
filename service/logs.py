"""JSON logs through stdlib logging: one object per line on stderr, written by a background thread.

Loggers put records on a queue (:class:`DeferredQueueHandler`); a
:class:`logging.handlers.QueueListener` thread formats them and writes them to stderr.
The access log goes further (:func:`access_writer`): the event loop puts a plain tuple on
that queue and the listener thread builds the LogRecord. Creating a LogRecord (caller
lookup, thread and process names, the ``extra`` copy) cost ~25 us of event-loop time per
request, more than the rest of the access log; formatting and the write syscall were ~8%
of the loop at 64 clients (BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import msgspec

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
# (created, method, path, status, latency_ms, request_id): one access-log line, built later.
AccessEntry = tuple[float, str, str, int, float, str]
AccessWriter = Callable[[str, str, int, float, str], None]
_queued_access: Callable[[Any], None] | None = None  # set by setup_logging: the listener's queue


def _timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


def format_access(entry: AccessEntry) -> bytes:
    """The access line JsonFormatter would write for the same request, built without a LogRecord."""
    created, method, path, status, latency_ms, request_id = entry
    return _encode(
        {
            "ts": _timestamp(created),
            "level": "info",
            "logger": ACCESS_LOGGER,
            "message": "request",
            "method": method,
            "path": path,
            "status": status,
            "latency_ms": latency_ms,
            "request_id": request_id,
        }
    )


class _Listener(logging.handlers.QueueListener):
    """The logging thread: LogRecords go to the handler; access tuples are formatted here and
    written in one ``write`` per burst (whatever queued up in the last ``ACCESS_FLUSH_S``)."""

    def __init__(self, records: queue.SimpleQueue[Any], handler: logging.StreamHandler[Any]) -> None:
        super().__init__(records, handler)
        self._handler = handler
        self._pending: list[bytes] = []

    def handle(self, record: Any) -> None:
        if isinstance(record, tuple):
            self._pending.append(format_access(record))
            if self.queue.empty():  # type: ignore[attr-defined]
                self._flush()
                # Let lines pile up for a moment: a put while this thread sleeps is a plain append,
                # while a put to a thread blocked on the queue wakes it (a syscall on the event loop
                # and a context switch per request, most of the access log's cost).
                time.sleep(ACCESS_FLUSH_S)
            return
        self._flush()
        super().handle(record)

    def _flush(self) -> None:
        if self._pending:
            lines = b"\n".join(self._pending).decode() + "\n"
            self._pending.clear()
            handler = self._handler
            with handler.lock:  # type: ignore[union-attr]
                handler.stream.write(lines)
                handler.flush()

    def stop(self) -> None:
        super().stop()
        self._flush()


def access_writer() -> AccessWriter:
    """``write(method, path, status, latency_ms, request_id)``: one access-log line per call.

    With :func:`setup_logging` in effect it costs one queue put; otherwise (tests, embedding)
    it is an ordinary ``logging`` call on the ``service.access`` logger.
    """
    logger = logging.getLogger(ACCESS_LOGGER)
    put = _queued_access
    if put is not None:

        def queued(method: str, path: str, status: int, latency_ms: float, request_id: str) -> None:
            if logger.isEnabledFor(logging.INFO):
                put((time.time(), method, path, status, latency_ms, request_id))

        return queued

    def logged(method: str, path: str, status: int, latency_ms: float, request_id: str) -> None:
        if logger.isEnabledFor(logging.INFO):
            extra = {"method": method, "path": path, "status": status, "latency_ms": latency_ms}
            logger.info("request", extra={**extra, "request_id": request_id})

    return logged


def setup_logging(level: str, stream: TextIO | None = None) -> logging.handlers.QueueListener:
    """Route our loggers and uvicorn's through one queued JSON handler (called by __main__ only).

    Returns the started listener; stop it at exit to flush what is still queued.
    """
    global _queued_access
    records: queue.SimpleQueue[Any] = queue.SimpleQueue()
    handler_out = logging.StreamHandler(stream or sys.stderr)
    handler_out.setFormatter(JsonFormatter())
    listener = _Listener(records, handler_out)
    handler = DeferredQueueHandler(records)
    for name in ("service", "contract", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler] if name != "uvicorn.error" else []
        logger.setLevel(level.upper())
        logger.propagate = name == "uvicorn.error"
    logging.getLogger("uvicorn.access").disabled = True  # we log requests ourselves
    _queued_access = records.put
    listener.start()
    return listener
