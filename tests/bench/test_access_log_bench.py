"""The access-log A/B's arithmetic: pooled, paired and CPU costs, and the A/A yardstick."""

from __future__ import annotations

from typing import Any

import pytest

from bench.access_log_bench import SERVERS, overall, point_summary


def _round(server: str, rps: float, cpu_us: float, seconds: float = 2.0) -> dict[str, Any]:
    ok = int(rps * seconds)
    return {
        "server": server,
        "arm": SERVERS[server],
        "statuses": {"200": ok},
        "duration_s": seconds,
        "rps": rps,
        "server_cpu_s": ok * cpu_us / 1e6,
        "latency_ms": {"p99": 10.0},
    }


def test_costs_compare_the_arms_and_each_arm_with_itself() -> None:
    # log on: 900 and 1,100 req/s on its two servers; off: 1,000 on both. CPU per request 110 / 100 us.
    rounds = [
        _round(name, rps, cpu)
        for _ in range(2)
        for name, rps, cpu in (("on-a", 900, 110), ("off-a", 1000, 100), ("off-b", 1000, 100), ("on-b", 1100, 110))
    ]
    point = point_summary(rounds)
    assert point["arms"]["on"]["rps"] == pytest.approx(1000)
    assert point["ab"]["rps"] == pytest.approx(0.0)  # pooled: the two "on" servers average out
    assert point["ab"]["cpu"] == pytest.approx(1 - 100 / 110)
    assert point["aa_on"]["rps"] == pytest.approx(1 - 900 / 1100)  # the noise between identical servers
    assert point["aa_off"]["rps"] == pytest.approx(0.0)
    mean = overall({"64": point, "256": point})
    assert mean["ab_cpu"] == pytest.approx(1 - 100 / 110)
    assert mean["aa_on_rps"] == pytest.approx(1 - 900 / 1100)
