"""Bad days for the model process, against a real server: stopped, killed with its version folder
gone, and the minutes it may take to load. Each prints what it measured."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from contract.artifact import resolve_version
from tests.resilience.conftest import V1, read_rss_kb
from tests.service.live_server import ROOT, LiveServer, free_port, launch_server

pytestmark = pytest.mark.resilience

BODY = {"texts": ["Stocks rally as oil prices fall", "Federer wins the final"]}  # two texts: the model process


def model_process(server: LiveServer) -> int:
    """The server's one child (started by whichever thread loaded the model: read every task)."""
    tasks = Path(f"/proc/{server.process.pid}/task").iterdir()
    children = [c for task in tasks for c in (task / "children").read_text().split()]
    assert len(children) == 1, children
    return int(children[0])


def restarts(url: str, reason: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith(f'hc_model_process_restarts_total{{reason="{reason}"}}'):
            return float(line.split()[1])
    raise AssertionError("hc_model_process_restarts_total missing")


class Traffic:
    """Clients sending two-text requests until stopped: statuses and the longest wait."""

    def __init__(self, url: str, clients: int = 4) -> None:
        self.url, self.statuses, self.slowest = url, Counter[int](), 0.0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                status = client.post("/predict", json=BODY).status_code
                self.slowest = max(self.slowest, time.monotonic() - started)
                self.statuses[status] += 1
                time.sleep(0.01)

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


def test_a_stopped_model_process_is_replaced_and_readiness_says_so(two_versions: Path) -> None:
    with launch_server(two_versions, "--version", V1) as server:
        with Traffic(server.url) as traffic:
            time.sleep(1.0)
            stalled = model_process(server)
            os.kill(stalled, signal.SIGSTOP)
            started = time.monotonic()
            unready = serving = None
            while time.monotonic() - started < 30:
                ready = httpx.get(f"{server.url}/health/ready", timeout=5).status_code
                if ready == 503 and unready is None:
                    unready = time.monotonic() - started
                if ready == 200 and unready is not None:
                    if httpx.post(f"{server.url}/predict", json=BODY, timeout=10).status_code == 200:
                        serving = time.monotonic() - started
                        break
                time.sleep(0.05)
            time.sleep(1.0)
        print(f"stall -> unready {unready} s, serving {serving} s; {dict(traffic.statuses)}; {traffic.slowest:.2f} s")
        assert unready is not None and unready <= 5, unready
        assert serving is not None and serving <= 10, serving
        assert set(traffic.statuses) <= {200, 503} and traffic.statuses[200] > 0, traffic.statuses
        assert traffic.slowest <= 10.5  # no request waited past the request timeout
        assert restarts(server.url, "stalled") == 1
        assert not Path(f"/proc/{stalled}").exists() or "Z" in Path(f"/proc/{stalled}/stat").read_text().split()[2]


def test_a_killed_model_process_whose_folder_is_gone_costs_one_restart(two_versions: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        folder = resolve_version(two_versions, V1)
        shutil.copytree(folder, Path(scratch) / folder.name)
        with launch_server(scratch) as server:
            for _ in range(50):  # warm: allocator and caches at their working size
                assert httpx.post(f"{server.url}/predict", json=BODY, timeout=10).status_code == 200
            rss_before = read_rss_kb(server.process.pid)
            shutil.rmtree(Path(scratch) / folder.name)
            os.kill(model_process(server), signal.SIGKILL)
            statuses: list[int] = []
            deadline = time.monotonic() + 30
            while len(statuses) < 300 and time.monotonic() < deadline:
                statuses.append(httpx.post(f"{server.url}/predict", json=BODY, timeout=10).status_code)
                if statuses[-1] != 200 and 200 in statuses:
                    break
            first_ok = statuses.index(200)
            rss_growth_mb = (read_rss_kb(server.process.pid) - rss_before) / 1024
            print(f"{first_ok} answers of 503 before the restart served; then {len(statuses) - first_ok} x 200")
            assert set(statuses[:first_ok]) <= {503}
            assert statuses[first_ok:] == [200] * (len(statuses) - first_ok) and len(statuses) == 300
            assert restarts(server.url, "exited") == 1
            assert rss_growth_mb < 20, f"RSS grew {rss_growth_mb:.0f} MB"


def test_liveness_answers_at_once_and_readiness_waits_for_the_model(two_versions: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "--artifacts-dir", str(two_versions), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seen: list[tuple[int, int]] = []
    try:
        deadline = time.monotonic() + 60
        while not seen or seen[-1][1] != 200:
            assert process.poll() is None and time.monotonic() < deadline
            try:
                seen.append((httpx.get(f"{url}/health/live").status_code, httpx.get(f"{url}/health/ready").status_code))
            except httpx.TransportError:
                time.sleep(0.01)
    finally:
        process.terminate()
        process.wait(30)
    assert (200, 503) in seen, seen[:5]  # bound and alive before the model was ready
    assert all(live == 200 for live, _ in seen)
