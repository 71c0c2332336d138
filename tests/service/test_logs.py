"""The JSON log: queued off the event loop, one line per record, access lines identical to JsonFormatter's."""

from __future__ import annotations

import io
import json
import logging
import time

import pytest

from service import logs


@pytest.fixture()
def captured(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """setup_logging writing into a StringIO; loggers and the access hook restored afterwards."""
    stream = io.StringIO()
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level) for n in ("service", "uvicorn")}
    monkeypatch.setattr(logs, "_queued_access", None)
    yield stream
    for name, (handlers, level) in saved.items():
        logging.getLogger(name).handlers[:] = handlers
        logging.getLogger(name).setLevel(level)


def test_access_line_matches_the_formatter_and_everything_is_flushed_on_stop(captured: io.StringIO) -> None:
    listener = logs.setup_logging("info", captured)
    write = logs.access_writer()
    before = time.time()
    for i in range(500):
        write("POST", "/predict", 200, 1.25, f"id-{i}")
    logging.getLogger("service").info("after the burst", extra={"k": 1})
    listener.stop()
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    assert len(lines) == 501
    access = lines[:500]
    assert [e["request_id"] for e in access] == [f"id-{i}" for i in range(500)]  # in order
    # The same object JsonFormatter makes from a LogRecord with the same extra fields.
    record = logging.LogRecord("service.access", logging.INFO, __file__, 0, "request", (), None)
    record.__dict__.update(method="POST", path="/predict", status=200, latency_ms=1.25, request_id="id-0")
    record.created = time.mktime(time.strptime(access[0]["ts"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    expected = json.loads(logs.JsonFormatter().format(record))
    assert {k: v for k, v in access[0].items() if k != "ts"} == {k: v for k, v in expected.items() if k != "ts"}
    assert list(access[0]) == list(expected)
    ts = time.strptime(access[0]["ts"][:19], "%Y-%m-%dT%H:%M:%S")
    assert abs(time.mktime(ts) - time.timezone - before) < 5 and access[0]["ts"].endswith("Z")
    assert lines[500]["message"] == "after the burst" and lines[500]["k"] == 1


def test_without_setup_the_access_log_is_a_plain_logging_call(caplog: pytest.LogCaptureFixture) -> None:
    write = logs.access_writer()
    with caplog.at_level(logging.INFO, logger="service.access"):
        write("GET", "/model", 200, 0.5, "rid")
    [record] = caplog.records
    assert record.name == "service.access" and record.request_id == "rid" and record.status == 200  # type: ignore[attr-defined]
