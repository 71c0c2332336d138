"""serve_bench's arithmetic: which way round its ratios are."""

from __future__ import annotations

from typing import Any

import pytest

from bench.serve_bench import TEXTS_PER_REQUEST, analyse


def texts_results(server_cpu_us: float, server_headlines_per_s: float, in_process: dict[str, float]) -> dict[str, Any]:
    point = {
        "group": "texts",
        "clients": 2,
        "rps": server_headlines_per_s / TEXTS_PER_REQUEST,
        "latency_ms": {"p50": 1.0, "p99": 2.0},
        "cpu_us_per_request": server_cpu_us,
        "headlines_per_s": server_headlines_per_s,
    }
    return {"points": [point], "settings": {"concurrency": [1, 64]}, "in_process": in_process}


def test_texts_ratios_are_http_over_in_process_in_wall_time_and_cpu_time() -> None:
    # The server spends 10 ms of CPU on 256 headlines (25,600 per CPU-second) and answers 24,000
    # per second; in process, the same work runs at 32,000 per second and per CPU-second.
    results = texts_results(10_000, 24_000, {"headlines_per_s": 32_000, "headlines_per_cpu_s": 32_000})
    ratios = analyse(results)["ratios"]
    assert ratios["texts_vs_in_process"] == pytest.approx(0.75)
    assert ratios["cpu_texts_vs_in_process"] == pytest.approx(0.8)  # below 1: HTTP costs CPU


def test_the_thread_arm_is_reported_beside_the_default_and_never_stands_in_for_it() -> None:
    results = texts_results(10_000, 24_000, {"headlines_per_s": 32_000, "headlines_per_cpu_s": 32_000})
    thread = {**results["points"][0], "group": "texts_thread", "headlines_per_s": 30_000, "cpu_us_per_request": 5}
    results["points"].append(thread)
    ratios = analyse(results)["ratios"]
    assert ratios["texts_vs_in_process"] == pytest.approx(0.75)  # the default server's, not the faster arm's
    assert ratios["texts_thread_vs_in_process"] == pytest.approx(0.9375)
    assert ratios["cpu_texts_vs_in_process"] == pytest.approx(0.8)
