"""JSON logs through stdlib logging: one object per line on stderr, written by a background thread.

Loggers put records on a queue (:class:`DeferredQueueHandler`, a few microseconds on the
event loop); a :class:`logging.handlers.QueueListener` thread formats them and writes them
to stderr. Formatting and the write syscall were ~8% of the event loop's time at 64 clients
with the access log on (BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import time

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


def setup_logging(level: str) -> logging.handlers.QueueListener:
    """Route our loggers and uvicorn's through one queued JSON handler (called by __main__ only).

    Returns the started listener; stop it at exit to flush what is still queued.
    """
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(JsonFormatter())
    listener = logging.handlers.QueueListener(records, stream)
    handler = DeferredQueueHandler(records)
    for name in ("service", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler] if name != "uvicorn.error" else []
        logger.setLevel(level.upper())
        logger.propagate = name == "uvicorn.error"
    logging.getLogger("uvicorn.access").disabled = True  # we log requests ourselves
    listener.start()
    return listener
