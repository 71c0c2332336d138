"""The data fixtures' rule: missing data skips a test outside CI and fails it under ``CI=true``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import _require


def test_missing_data_skips_outside_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="news.csv not found"):
        _require(tmp_path / "news.csv", "news.csv")


def test_missing_data_fails_under_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(BaseException) as outcome:  # a skip must not escape: it would pass as "skipped"
        _require(tmp_path / "news.csv", "news.csv")
    assert outcome.type is pytest.fail.Exception, f"{outcome.typename}: {outcome.value}"
    assert "news.csv not found" in str(outcome.value)


def test_present_data_is_returned(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CI", "true")
    (tmp_path / "news.csv").write_text("title,category\n")
    assert _require(tmp_path / "news.csv", "news.csv") == tmp_path / "news.csv"
