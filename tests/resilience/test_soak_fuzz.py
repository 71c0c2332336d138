"""Soak (steady load, no errors, flat memory) and schemathesis fuzzing of the live server's own OpenAPI schema."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.resilience.conftest import read_tree_rss_kb
from tests.service.live_server import launch_server

pytestmark = pytest.mark.resilience

SOAK_S = float(os.environ.get("RESILIENCE_SOAK_S", "300"))
FUZZ_EXAMPLES = int(os.environ.get("RESILIENCE_FUZZ_EXAMPLES", "60"))
TOKEN = "resilience-token"
# Every default check runs, positive-data acceptance included: the schema states every rule the
# validator applies (exactly one of text/texts, one whitespace rule, the runtime limits), so a
# schema-valid request must be accepted.


def test_soak_steady_load_no_errors_flat_rss(two_versions: Path, bodies_file: Path, load_factory: Any) -> None:
    warmup_s = max(3.0, min(30.0, SOAK_S / 5))
    with launch_server(two_versions, "--torch-threads", "1") as server:
        # RSS is taken after a warm-up at the same load: allocator arenas, caches and
        # connection buffers reach their working size first; growth after that is a leak.
        load_factory(server.port, bodies_file, 32, warmup_s).result()
        before = read_tree_rss_kb(server.process.pid)
        load = load_factory(server.port, bodies_file, 32, SOAK_S)
        peak = before
        while load.process.poll() is None:
            peak = max(peak, read_tree_rss_kb(server.process.pid))
            time.sleep(1.0)
        result = load.result()
        after = read_tree_rss_kb(server.process.pid)
    assert result["requests"] > 0
    assert result["statuses"] == {"200": result["requests"]}, result
    assert sum(result["errors"].values()) == 0, result
    growth = after / before - 1
    print(f"soak {SOAK_S:g}s: {result['rps']:.0f} req/s, RSS {before} -> {after} kB (peak {peak}), {growth:+.1%}")
    assert growth < 0.10, f"RSS grew {growth:.1%} ({before} -> {after} kB, peak {peak})"


def test_fuzz_openapi_no_server_errors_and_schema_conformance(two_versions: Path) -> None:
    with launch_server(two_versions, env={"HC_ADMIN_TOKEN": TOKEN}) as server:
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.path for op in operations} >= {"/predict", "/health/live", "/model", "/admin/reload"}
        for operation in operations:

            @settings(
                max_examples=FUZZ_EXAMPLES,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            @given(case=operation.as_strategy())
            def check(case: schemathesis.Case) -> None:
                response = case.call(timeout=30)
                if response.status_code == 504 and "X-Request-Timeout-Ms" in (case.headers or {}):
                    # A valid but tiny client deadline (e.g. 1 ms) may pass: the documented 504.
                    assert response.json()["error"]["type"] == "timeout"
                    return
                case.validate_response(response)

            check()
