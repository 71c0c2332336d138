"""The JSON log: queued off the event loop, one line per record, access lines identical to JsonFormatter's."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import logging.handlers
import threading
import time
from pathlib import Path

import pytest

from service.observability import logs


@pytest.fixture()
def captured(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """setup_logging writing into a StringIO; loggers and the access hook restored afterwards."""
    stream = io.StringIO()
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level) for n in ("service", "uvicorn")}
    monkeypatch.setattr(logs, "_access_buffer", None)
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


def test_on_the_loop_a_burst_is_one_hand_over_in_order_and_nothing_is_lost_at_exit(captured: io.StringIO) -> None:
    listener = logs.setup_logging("info", captured)
    buffer = logs._access_buffer
    assert buffer is not None
    handed: list[object] = []
    real_put = buffer._put

    def counting_put(item: object) -> None:
        handed.append(item)
        real_put(item)

    buffer._put = counting_put  # type: ignore[method-assign]
    write = logs.access_writer()
    log = logging.getLogger("service")

    async def serve() -> None:
        for i in range(300):
            write("POST", "/predict", 200, 1.0, f"a-{i}")
        assert handed == []  # nothing crossed threads per request
        await asyncio.sleep(logs.ACCESS_FLUSH_S * 3)  # the timer hands the burst over
        assert len(handed) == 1 and isinstance(handed[0], bytes) and handed[0].count(b"\n") == 300
        write("GET", "/model", 200, 1.0, "b-0")
        log.info("a record from the loop")  # flushes b-0 first: the stream stays in order
        for i in range(5):  # the loop stops before its timer fires: listener.stop() writes these
            write("GET", "/health/live", 200, 1.0, f"c-{i}")

    asyncio.run(serve())
    listener.stop()
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    order = [e.get("request_id", e["message"]) for e in lines]
    assert order == [f"a-{i}" for i in range(300)] + ["b-0", "a record from the loop"] + [f"c-{i}" for i in range(5)]
    assert lines[0]["logger"] == "service.access" and lines[0]["status"] == 200 and lines[0]["ts"].endswith("Z")


def test_access_lines_escape_what_clients_send(captured: io.StringIO) -> None:
    listener = logs.setup_logging("info", captured)
    write = logs.access_writer()
    path = '/x"\\y\n\u2028\U0001f600'
    write("GET", path, 404, 0.1, 'id"\\')
    listener.stop()
    [line] = captured.getvalue().rstrip("\n").split("\n")  # JSON lines end at \n only
    entry = json.loads(line)
    assert entry["path"] == path and entry["request_id"] == 'id"\\'


def test_access_log_off_when_the_level_is_above_info(captured: io.StringIO) -> None:
    listener = logs.setup_logging("warning", captured)
    write = logs.access_writer()
    write("GET", "/model", 200, 0.1, "rid")
    listener.stop()
    assert captured.getvalue() == ""


def test_a_file_stream_gets_bursts_as_bytes_in_order_with_other_records(captured: io.StringIO, tmp_path: Path) -> None:
    path = tmp_path / "stderr.log"
    with open(path, "w", encoding="utf-8") as stream:  # a TextIOWrapper with .buffer, like sys.stderr
        listener = logs.setup_logging("info", stream)
        write = logs.access_writer()

        async def serve() -> None:
            for i in range(50):
                write("GET", "/é", 200, 1.0, f"a-{i}")
            logging.getLogger("service").info("text record")
            write("GET", "/x", 200, 1.0, "b-0")

        asyncio.run(serve())
        listener.stop()
    entries = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [e.get("request_id", e["message"]) for e in entries] == [f"a-{i}" for i in range(50)] + [
        "text record",
        "b-0",
    ]
    assert entries[0]["path"] == "/é"


class _StalledStream(io.StringIO):
    """stderr whose reader stopped: every write blocks until ``drain`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.drain = threading.Event()

    def write(self, text: str) -> int:
        self.drain.wait(10)
        return super().write(text)


def _stalled_logging(
    monkeypatch: pytest.MonkeyPatch, cap: int
) -> tuple[_StalledStream, logging.handlers.QueueListener, logs.AccessBuffer]:
    """Logging set up onto a stream that blocks until drained, with a backlog cap of ``cap`` bytes."""
    monkeypatch.setattr(logs, "ACCESS_BACKLOG_BYTES", cap)
    stream = _StalledStream()
    listener = logs.setup_logging("info", stream)
    buffer = logs._access_buffer
    assert buffer is not None
    return stream, listener, buffer


def test_a_stalled_stderr_costs_bounded_memory_and_the_drops_are_counted_and_reported(
    monkeypatch: pytest.MonkeyPatch, captured: io.StringIO
) -> None:
    cap = 64 * 1024
    stream, listener, buffer = _stalled_logging(monkeypatch, cap)
    write = logs.access_writer()
    long_path = "/" + "p" * 1000  # ~1.2 KB per line
    backlog: list[int] = []

    async def serve(bursts: int) -> None:
        for i in range(bursts):
            for j in range(20):
                write("GET", long_path, 404, 1.0, f"{i}-{j}")
            await asyncio.sleep(logs.ACCESS_FLUSH_S * 2)
            backlog.append(buffer.handed_bytes - buffer.written_bytes)

    asyncio.run(serve(40))  # ~1 MB of lines while nothing drains
    assert max(backlog) <= cap  # queued, not yet written: never past the cap
    dropped = logs.dropped_access_lines()
    assert dropped > 0 and dropped % 20 == 0
    stream.drain.set()
    time.sleep(0.2)  # the backlog drains
    asyncio.run(serve(1))  # the next burst after recovery reports the gap first
    listener.stop()
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = [e for e in entries if e.get("message") == "request"]
    [warning] = [e for e in entries if e["level"] == "warning"]
    assert f"{dropped} lines dropped" in warning["message"]
    assert len(access) + dropped == 41 * 20
    assert entries.index(warning) == len(entries) - 21  # just before the burst that followed the gap


def test_every_record_shares_the_one_backlog_bound_and_its_drops_are_counted_and_reported(
    monkeypatch: pytest.MonkeyPatch, captured: io.StringIO
) -> None:
    """Not only access lines: warnings and errors from any thread queue into the same bounded
    backlog, so a flood of bad requests cannot grow memory while stderr is stalled."""
    cap = 64 * 1024
    stream, listener, buffer = _stalled_logging(monkeypatch, cap)
    log = logging.getLogger("service")
    backlog = []
    for i in range(2000):  # ~0.8 MB of records while nothing drains
        log.warning("request failed: %s", "x" * 100, extra={"n": i})
        backlog.append(buffer.backlog())
    assert max(backlog) <= cap
    dropped = logs.dropped_log_records()
    assert dropped > 1000
    stream.drain.set()
    time.sleep(0.2)
    log.warning("after the stall")
    listener.stop()
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    [report] = [e for e in entries if "records dropped" in e["message"]]
    assert f"{dropped} records dropped" in report["message"]
    assert entries[-1]["message"] == "after the stall"
    assert len([e for e in entries if e["message"].startswith("request failed")]) + dropped == 2000


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="thread names are read from /proc (Linux)")
def test_the_logging_thread_is_named_for_the_os(captured: io.StringIO) -> None:
    """``top -H``, py-spy and bench.thread_split tell the logging thread apart by this name."""
    listener = logs.setup_logging("info", captured)
    try:
        deadline = time.monotonic() + 5.0  # the thread names itself as it starts
        while "hc-log" not in (names := {(t / "comm").read_text().strip() for t in Path("/proc/self/task").iterdir()}):
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
    finally:
        listener.stop()
    assert "hc-log" in names
