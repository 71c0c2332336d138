"""Hot reload keeps live latency: loading and warming a new version share the one model thread."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.resilience.conftest import V1, V2
from tests.service.live_server import launch_server

pytestmark = pytest.mark.resilience

TOKEN = "latency-token"
CLIENTS = 8
SECONDS = 4.0
RELOAD_EVERY_S = 0.4


def test_live_latency_holds_during_reloads(
    two_versions: Path, bodies_file: Path, load_factory: Any
) -> None:
    env = {"HC_ADMIN_TOKEN": TOKEN}
    with launch_server(two_versions, "--version", V1, "--torch-threads", "1", env=env) as server:
        load_factory(server.port, bodies_file, CLIENTS, 1.0).result()  # settle caches and allocator
        before = load_factory(server.port, bodies_file, CLIENTS, SECONDS).result()
        during = load_factory(server.port, bodies_file, CLIENTS, SECONDS)
        reloads, versions = 0, [V2, V1]
        deadline = time.monotonic() + SECONDS - 0.5
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as admin:
            while time.monotonic() < deadline:  # a reload every RELOAD_EVERY_S for the whole window
                started = time.monotonic()
                r = admin.post("/admin/reload", json={"version": versions[reloads % 2]})
                assert r.status_code == 200, r.text
                reloads += 1
                time.sleep(max(0.0, RELOAD_EVERY_S - (time.monotonic() - started)))
        during_result = during.result()
    p99_before, p99_during = before["latency_ms"]["p99"], during_result["latency_ms"]["p99"]
    p50_before, p50_during = before["latency_ms"]["p50"], during_result["latency_ms"]["p50"]
    print(
        f"reloads={reloads} p50 {p50_before:.1f} -> {p50_during:.1f} ms, p99 {p99_before:.1f} -> {p99_during:.1f} ms,"
        f" req/s {before['rps']:.0f} -> {during_result['rps']:.0f}"
    )
    assert reloads >= 4, reloads
    for result in (before, during_result):
        assert result["statuses"] == {"200": result["requests"]}, result
        assert sum(result["errors"].values()) == 0, result
    # Generous: a reload may delay a batch by one load or one warm-up pass (tens of ms), never by a
    # whole warm-up or a full GC pass, and never starve the live traffic. Measured on 2 shared CPUs:
    # p99 28 -> 32 ms here; 40 -> 137 ms with load + warm-up beside the model thread
    # (asyncio.to_thread); 35 -> 484 ms when a full GC pass also followed each swap.
    assert p99_during <= 2 * p99_before + 20, (p99_before, p99_during)
    assert during_result["rps"] >= 0.5 * before["rps"], (before["rps"], during_result["rps"])
