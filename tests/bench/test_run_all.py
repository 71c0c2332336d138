"""bench.run_all rewrites BENCHMARKS.md but keeps the sections it cannot regenerate."""

from __future__ import annotations

from pathlib import Path

from bench.run_all import write_report


def test_hostile_clients_section_survives_a_rewrite(tmp_path: Path) -> None:
    report = tmp_path / "BENCHMARKS.md"
    report.write_text("# Benchmarks\n\nold\n\n## Hostile clients\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    write_report(report, None, None, "train", "serve")
    text = report.read_text()
    assert "old" not in text and "## Serving" in text
    assert text.count("## Hostile clients") == 1 and "| 1 | 2 |" in text
    write_report(report, None, None, "train", "serve")  # idempotent
    assert report.read_text() == text
