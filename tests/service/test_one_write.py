"""A response leaves in one system call: the head waits for the body (``OneWriteTransport``)."""

from __future__ import annotations

import asyncio
import http.client
from pathlib import Path
from typing import Any

from service.http.server import OneWriteTransport
from tests.service.live_server import launch_server


class Recorder:
    """A transport that records what it was asked to send, one entry per call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[bytes]]] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", [data]))

    def writelines(self, data: Any) -> None:
        self.calls.append(("writelines", list(data)))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> str:
        return f"extra:{name}"


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


def test_the_head_and_the_body_go_out_in_one_call() -> None:
    async def main() -> Recorder:
        sent = Recorder()
        writer = OneWriteTransport(sent, asyncio.get_running_loop())  # type: ignore[arg-type]
        writer.write(HEAD)
        assert sent.calls == []
        writer.write(b"{}")
        writer.write(b"more")  # a later chunk of a streamed body goes out as it comes
        await asyncio.sleep(0)
        return sent

    sent = asyncio.run(main())
    assert sent.calls == [("writelines", [HEAD, b"{}"]), ("write", [b"more"])]


def test_a_head_without_a_body_is_sent_within_the_same_loop_iteration_or_on_close() -> None:
    async def main() -> tuple[Recorder, Recorder]:
        loop = asyncio.get_running_loop()
        alone, closing = Recorder(), Recorder()
        OneWriteTransport(alone, loop).write(HEAD)  # type: ignore[arg-type]  # a HEAD request: no body write
        writer = OneWriteTransport(closing, loop)  # type: ignore[arg-type]
        writer.write(HEAD)
        writer.close()
        assert closing.calls == [("write", [HEAD])] and closing.closed
        await asyncio.sleep(0)
        return alone, closing

    alone, closing = asyncio.run(main())
    assert alone.calls == [("write", [HEAD])]
    assert closing.calls == [("write", [HEAD])]


def test_a_100_continue_is_not_held_and_other_calls_reach_the_transport() -> None:
    async def main() -> tuple[Recorder, str]:
        sent = Recorder()
        writer = OneWriteTransport(sent, asyncio.get_running_loop())  # type: ignore[arg-type]
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return sent, writer.get_extra_info("peername")

    sent, extra = asyncio.run(main())
    assert sent.calls == [("write", [b"HTTP/1.1 100 Continue\r\n\r\n"])]
    assert extra == "extra:peername"


def write_calls(pid: int) -> int:
    """System calls that wrote, by this process so far (``syscw`` in /proc/PID/io)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    raise AssertionError("no syscw in /proc/PID/io")


def test_the_server_answers_each_request_with_one_write(artifacts_dir: Path) -> None:
    requests = 200
    with launch_server(artifacts_dir, "--no-access-log", "--torch-threads", "1") as server:
        client = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        for path in ("/health/live", "/predict"):
            body = b'{"text": "Oil prices"}' if path == "/predict" else None
            method = "POST" if body else "GET"
            client.request(method, path, body, {"Content-Type": "application/json"})  # warm the path
            client.getresponse().read()
            before = write_calls(server.process.pid)
            for _ in range(requests):
                client.request(method, path, body, {"Content-Type": "application/json"})
                response = client.getresponse()
                response.read()
                assert response.status == 200
            writes = write_calls(server.process.pid) - before
            # One per response; a few to spare for anything else the process writes meanwhile.
            assert writes <= requests * 1.1, f"{path}: {writes} write calls for {requests} responses"
        client.close()
