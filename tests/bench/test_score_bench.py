"""bench.score_bench: the figure held against the target is the one a user meets (process start to exit)."""

from __future__ import annotations

from typing import Any

from bench import score_bench


def point(rows: int, wall_s: float, scoring_s: float) -> dict[str, Any]:
    return {
        "rows": rows,
        "scoring_s": scoring_s,
        "headlines_per_s": rows / scoring_s,
        "wall_s": wall_s,
        "end_to_end_headlines_per_s": rows / wall_s,
        "peak_rss_mib": 300.0,
        "cpu_s": rows / 20_000,
    }


def test_the_target_row_is_process_start_to_exit_beside_the_scorers_own_figure() -> None:
    results = {
        "settings": {"threads": 2},
        # The scorer's own timing meets the target, the wall clock from process start does not.
        "points": {"10000": [point(10_000, 1.5, 0.3)], "100000": [point(100_000, 5.0, 3.0)]},
        "start_up": {"wall_s": 1.2},
        "start_parts": {"interpreter + import torch (the model process)": 1.0},
    }
    table = score_bench.markdown(results)
    target = next(line for line in table.splitlines() if "process start to exit: headlines/s" in line)
    assert "**20,000** (5.00 s)" in target and "❌" in target, target
    assert "| … the scorer's own timing" in table and "33,333 (3.00 s)" in table
    assert "| Fixed start cost: the same command on a one-row file, process start to exit | 1.20 s |" in table
    assert "| … alone: interpreter + import torch (the model process) | 1.00 s |" in table
