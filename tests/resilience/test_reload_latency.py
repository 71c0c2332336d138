"""Hot reload keeps live latency: loading and warming a new version share the one model thread."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.resilience.conftest import V1, V2
from tests.service.live_server import LiveServer, launch_server

pytestmark = pytest.mark.resilience

TOKEN = "latency-token"
CLIENTS = 8
SECONDS = 3.0
RELOAD_EVERY_S = 0.4
ATTEMPTS = 3  # the CI machine is shared: a noisy window is measured again, a real stall fails every time


def measure(server: LiveServer, bodies_file: Path, load_factory: Any) -> tuple[dict[str, Any], dict[str, Any], int]:
    """Load results without reloads, then with a reload every RELOAD_EVERY_S; and the number of reloads."""
    before = load_factory(server.port, bodies_file, CLIENTS, SECONDS).result()
    during = load_factory(server.port, bodies_file, CLIENTS, SECONDS)
    reloads, versions = 0, [V2, V1]
    deadline = time.monotonic() + SECONDS - 0.5
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as admin:
        while time.monotonic() < deadline:
            started = time.monotonic()
            r = admin.post("/admin/reload", json={"version": versions[reloads % 2]})
            assert r.status_code == 200, r.text
            reloads += 1
            time.sleep(max(0.0, RELOAD_EVERY_S - (time.monotonic() - started)))
    return before, during.result(), reloads


def test_live_latency_holds_during_reloads(two_versions: Path, bodies_file: Path, load_factory: Any) -> None:
    env = {"HC_ADMIN_TOKEN": TOKEN}
    seen = []
    with launch_server(two_versions, "--version", V1, "--torch-threads", "1", env=env) as server:
        load_factory(server.port, bodies_file, CLIENTS, 1.0).result()  # settle caches and allocator
        for _ in range(ATTEMPTS):
            before, during, reloads = measure(server, bodies_file, load_factory)
            assert reloads >= 3, reloads
            for result in (before, during):
                assert result["statuses"] == {"200": result["requests"]}, result
                assert sum(result["errors"].values()) == 0, result
            p99 = (before["latency_ms"]["p99"], during["latency_ms"]["p99"])
            rps = (before["rps"], during["rps"])
            seen.append(f"reloads={reloads} p99 {p99[0]:.1f} -> {p99[1]:.1f} ms, req/s {rps[0]:.0f} -> {rps[1]:.0f}")
            print(seen[-1])
            # Generous: a reload may delay a batch by one load or one warm-up pass (tens of ms), never
            # by a whole warm-up or a full GC pass, and never starve the live traffic (a reload in
            # asyncio.to_thread with a full GC pass after each swap fails this by several times).
            if p99[1] <= 2 * p99[0] + 20 and rps[1] >= 0.5 * rps[0]:
                return
    pytest.fail("live latency did not hold during reloads: " + "; ".join(seen))
