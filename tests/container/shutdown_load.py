"""Send N /predict requests, C at a time, stop the server half-way, and account for every request.

Each request ends one of three ways:
- ``answered``: a complete HTTP response (any status) was read;
- ``refused``: the connection was refused before the server accepted it (the listener was
  already closed), so the server never saw the request;
- ``lost``: anything else (empty reply, reset, timeout, truncated body): the server had the
  connection and the request and did not answer it. A clean shutdown loses none.

Clients keep one keep-alive connection each, as HTTP client pools do, and open a new one when
the server says ``Connection: close`` or drops it. Used by the container stage (``stop`` runs
``docker kill -s TERM``) and runnable by hand against any server::

    python -m tests.container.shutdown_load --port 8000 --pid 1234   # SIGTERM to pid 1234 half-way
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import sys
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

BODY = json.dumps({"text": "Stocks rally as oil prices fall"}).encode()


@dataclass
class Outcome:
    answered: int = 0
    refused: int = 0
    lost: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def sent(self) -> int:
        return self.answered + self.refused + self.lost

    def summary(self) -> str:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(self.errors.items())) or "none"
        return (
            f"sent {self.sent}, answered {self.answered} ({statuses}), refused before acceptance "
            f"{self.refused}, lost {self.lost} (errors: {errors})"
        )


def run(host: str, port: int, total: int, concurrency: int, stop: Callable[[], None], stop_after: int) -> Outcome:
    """Send ``total`` requests from ``concurrency`` threads; call ``stop`` once ``stop_after`` are answered."""
    outcome = Outcome()
    lock = threading.Lock()
    remaining = [total]
    stopped = threading.Event()

    def take() -> bool:
        with lock:
            if remaining[0] == 0:
                return False
            remaining[0] -= 1
            return True

    def record(kind: str, status: int | None = None, error: str | None = None) -> None:
        with lock:
            setattr(outcome, kind, getattr(outcome, kind) + 1)
            if status is not None:
                outcome.statuses[status] += 1
            if error is not None:
                outcome.errors[error] += 1
            due = kind == "answered" and outcome.answered >= stop_after and not stopped.is_set()
            if due:
                stopped.set()
        if due:
            stop()

    def client() -> None:
        conn: http.client.HTTPConnection | None = None
        while take():
            fresh = conn is None
            if conn is None:
                conn = http.client.HTTPConnection(host, port, timeout=30)
                try:
                    conn.connect()
                except ConnectionRefusedError:
                    conn = None
                    record("refused")
                    continue
                except OSError as exc:
                    conn = None
                    record("lost", error=f"connect: {type(exc).__name__}")
                    continue
            try:
                conn.request("POST", "/predict", body=BODY, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = None
                record("lost", error=f"{'new' if fresh else 'reused'} connection: {type(exc).__name__}")
                continue
            record("answered", status=response.status)
            if response.will_close:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.container.shutdown_load", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--pid", type=int, required=True, help="process to send SIGTERM half-way")
    args = parser.parse_args(argv)
    outcome = run(
        args.host,
        args.port,
        args.requests,
        args.concurrency,
        lambda: os.kill(args.pid, signal.SIGTERM),
        args.requests // 2,
    )
    print(outcome.summary())
    return 1 if outcome.lost else 0


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    sys.exit(main())
