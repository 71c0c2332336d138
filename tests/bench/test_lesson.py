"""The lesson re-implementation: its preprocessing, and a tiny end-to-end run."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from bench.lesson import LessonResult, gather_last_relevant_hidden, pad_sequences, preprocess, run_lesson

SMALL_STOPWORDS = ["for", "the", "a", "of", "to", "in"]


def _english_stopwords(nltk_dir: Path) -> list[str]:
    words = (nltk_dir / "corpora" / "stopwords" / "english").read_text(encoding="utf-8").split("\n")
    return [w for w in words if w]


def test_preprocess_matches_lesson_example(nltk_dir: Path) -> None:
    assert preprocess("Great week for the NYSE!", _english_stopwords(nltk_dir)) == "great week nyse"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Great week for the NYSE!", "great week nyse"),
        ("Wall St. Bears Claw Back Into the Black (Reuters)", "wall st bears claw back into black"),
        ("Oil-price rise; stocks fall", "oil price rise stocks fall"),
        ("The", ""),
    ],
)
def test_preprocess_small_stopword_list(raw: str, expected: str) -> None:
    assert preprocess(raw, SMALL_STOPWORDS) == expected


def test_pad_and_gather() -> None:
    import numpy as np
    import torch

    padded = pad_sequences([np.array([3, 4, 5]), np.array([6])])
    assert padded.tolist() == [[3, 4, 5], [6, 0, 0]]
    hiddens = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    picked = gather_last_relevant_hidden(hiddens, torch.tensor([3, 1]))
    assert picked.tolist() == [hiddens[0, 2].tolist(), hiddens[1, 0].tolist()]


def _rows(news_csv: Path, n: int) -> tuple[list[str], list[str]]:
    with news_csv.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    # Take every k-th row so all four classes appear in a small sample.
    step = max(1, len(rows) // n)
    picked = rows[::step][:n]
    return [r["title"] for r in picked], [r["category"] for r in picked]


def test_run_lesson_tiny(news_csv: Path, nltk_dir: Path) -> None:
    titles, labels = _rows(news_csv, 200)
    train = (titles[:140], labels[:140])
    val = (titles[140:170], labels[140:170])
    test = (titles[170:], labels[170:])
    messages: list[str] = []

    result = run_lesson(train, val, test, _english_stopwords(nltk_dir), epochs=1, threads=1, log=messages.append)

    assert isinstance(result, LessonResult)
    assert result.epochs_run == 1
    assert len(result.seconds_per_epoch) == 1 and result.seconds_per_epoch[0] > 0
    assert result.preprocess_seconds > 0
    assert 0.0 <= result.test_f1 <= 1.0 and not math.isnan(result.test_f1)
    overall = result.test_performance["overall"]
    assert set(overall) == {"precision", "recall", "f1", "num_samples"}
    assert overall["num_samples"] == 30.0
    assert overall["f1"] == result.test_f1
    assert set(result.test_performance["class"]) == set(labels[:140])
    assert sum(c["num_samples"] for c in result.test_performance["class"].values()) == 30.0
    assert messages and messages[-1].startswith("lesson:")
