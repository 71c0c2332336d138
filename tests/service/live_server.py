"""Start ``python -m service`` as a real subprocess on a free port and wait until it is ready.

Importable by other suites and benchmarks (``from tests.service.live_server import launch_server``)::

    with launch_server(artifacts_dir, "--max-batch-size", "64") as server:
        httpx.post(f"{server.url}/predict", json={"text": "..."})
    # leaving the block sends SIGTERM and waits for a clean exit
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait for the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log()}")


def start_server(
    artifacts_dir: str | os.PathLike[str],
    *args: str,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 60.0,
    python: str = sys.executable,
) -> LiveServer:
    """Launch the server (logs go to a temp file) and return once /health/ready is 200."""
    port = free_port()
    log_file = tempfile.NamedTemporaryFile(prefix="hc-server-", suffix=".log", delete=False)  # noqa: SIM115
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    process = subprocess.Popen(
        [python, "-m", "service", "--artifacts-dir", str(artifacts_dir), "--port", str(port), *args],
        cwd=ROOT,
        env=full_env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    log_file.close()
    server = LiveServer(process, port, Path(log_file.name))
    try:
        server.wait_ready(ready_timeout)
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.wait()
        raise
    return server


@contextlib.contextmanager
def launch_server(artifacts_dir: str | os.PathLike[str], *args: str, **kwargs: object) -> Iterator[LiveServer]:
    server = start_server(artifacts_dir, *args, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.stop()
