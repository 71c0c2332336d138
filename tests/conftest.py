"""Shared test fixtures: locations of the real data, found through environment variables."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NEWS_DATA = Path(os.environ.get("NEWS_DATA", ROOT.parent / "shared" / "data" / "news_10k.csv"))
NLTK_DIR = Path(os.environ.get("NLTK_DATA", ROOT.parent / "shared" / "nltk_data"))
os.environ.setdefault("NLTK_DATA", str(NLTK_DIR))


def _require(path: Path, what: str) -> Path:
    if path.exists():
        return path
    message = f"{what} not found at {path} (set the environment variable to its location)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def news_csv() -> Path:
    """The 10K AG News sample (NEWS_DATA, default ../shared/data/news_10k.csv)."""
    return _require(NEWS_DATA, "news_10k.csv (NEWS_DATA)")


@pytest.fixture(scope="session")
def nltk_dir() -> Path:
    """NLTK data folder with the English stopwords (NLTK_DATA, default ../shared/nltk_data)."""
    return _require(NLTK_DIR / "corpora" / "stopwords" / "english", "NLTK stopwords (NLTK_DATA)").parents[2]
