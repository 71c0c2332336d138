"""Steady (open-loop) load: ``python -m tests.resilience.paced_load --port P --rate R --duration S``.

Request ``i`` is due at ``start + i / rate`` whatever happened to the ones before, and its
latency counts from that moment, so a stall shows up as latency instead of as fewer requests
(a closed-loop client would quietly slow down with the server). Each request's wall-clock due
time, latency and outcome (the status code, or the error's class name) go to stdout as one
JSON document, so a test can cut the run into the windows before and during an event.
SIGTERM ends the schedule early (requests already due are still sent and counted), so a test
can stop the load when its event is over instead of guessing the event's length up front.
No retries: every error a client would see counts. Raw asyncio streams with pre-encoded
requests keep the client's own cost small (an HTTP library's per-request overhead would
show up as latency on a small machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.loadgen import HOST, _read_response, encode_request

Result = tuple[float, float, str]


async def _worker(
    port: int,
    queue: asyncio.Queue[tuple[int, float, float] | None],
    requests: list[bytes],
    timeout_s: float,
    results: list[Result],
) -> None:
    """One keep-alive connection taking due requests off the queue; reconnects after a close or an error."""
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while (item := await queue.get()) is not None:
        i, due, wall = item
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout_s)
            assert reader is not None
            writer.write(requests[i % len(requests)])
            await writer.drain()
            status, headers = await asyncio.wait_for(_read_response(reader), timeout_s)
            outcome = str(status)
            if headers.get(b"connection", b"").lower() == b"close":
                writer.close()
                writer = None
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            outcome = type(exc).__name__
            if writer is not None:
                writer.close()
            writer = None
        results.append((wall, time.monotonic() - due, outcome))
    if writer is not None:
        writer.close()


async def run(
    port: int, rate: float, duration_s: float, bodies: list[bytes], connections: int, timeout_s: float
) -> list[Result]:
    requests = [encode_request("POST", "/predict", body, port) for body in bodies]
    queue: asyncio.Queue[tuple[int, float, float] | None] = asyncio.Queue()
    results: list[Result] = []
    workers = [asyncio.create_task(_worker(port, queue, requests, timeout_s, results)) for _ in range(connections)]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    started, wall_start = time.monotonic(), time.time()
    for i in range(int(rate * duration_s)):
        if stop.is_set():
            break
        due = started + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((i, due, wall_start + i / rate))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return sorted(results)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.resilience.paced_load")
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, required=True, help="seconds at most (SIGTERM ends it sooner)")
    parser.add_argument("--bodies", type=Path, required=True, help="one JSON body per line, cycled")
    parser.add_argument(
        "--connections", type=int, default=32, help="keep-alive connections (requests wait for a free one)"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, seconds")
    args = parser.parse_args(argv)
    bodies = [line.encode() for line in args.bodies.read_text().splitlines() if line.strip()]
    results = asyncio.run(run(args.port, args.rate, args.duration, bodies, args.connections, args.timeout))
    json.dump({"requests": results}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
