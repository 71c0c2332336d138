"""Tiny real artifacts (randomly initialised GRU, real vocabulary) and app/server fixtures."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from itertools import permutations
from pathlib import Path
from typing import Any

import pytest
import torch

with warnings.catch_warnings():  # starlette's TestClient nags about httpx vs httpx2; httpx is what we have
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from contract.artifact import write_artifact
from contract.model import ModelConfig, TextClassifier
from contract.text import LabelEncoder, Normalizer, PreprocessSettings, Vocabulary
from service.app import create_app
from service.settings import Settings

CATEGORIES = ["Business", "Sci/Tech", "Sports", "World"]
STOPWORDS = ("the", "of", "and", "a", "to", "in", "on", "for", "as")
TITLES = [
    "Stocks rally as oil prices fall on supply news",
    "Federer wins the final in straight sets",
    "Intel unveils a faster chip for laptops",
    "Peace talks resume in Geneva after ceasefire",
    "Central bank raises interest rates again",
    "NASA probe sends images of Mars craters",
    "Striker scores twice as United beat City",
    "Election results disputed by opposition party",
]
TOKEN_TEXTS = [
    "Stocks rally",
    "Federer wins the final in straight sets",
    "the of and",
    "completely unknown words here",
    "Intel unveils a faster chip for laptops while NASA probe sends images of Mars craters and more " * 3,
    "Peace talks",
    "Oil",
]


def distinct_texts(n: int) -> list[str]:
    """``n`` texts whose token sequences all differ (two or three in-vocabulary words each).

    Answers to them differ too, so a test that checks each answer against its own text sees
    swapped or shifted answers (texts mapping to a handful of sequences would hide them).
    """
    normalizer = Normalizer(PreprocessSettings(stopwords=STOPWORDS))
    words = sorted({w for t in TITLES for w in normalizer.tokens(t)})
    combos = [" ".join(p) for k in (2, 3) for p in permutations(words, k)]
    assert n <= len(combos), f"only {len(combos)} distinct texts available"
    step = len(combos) // n
    return [combos[i * step].capitalize() for i in range(n)]


def make_artifact(
    artifacts_dir: Path, *, seed: int = 0, version: str | None = None, size: str = "tiny", **config: Any
) -> Path:
    """Write one real artifact (random weights) and return its folder.

    ``size="default"`` is the architecture training ships (ModelConfig's defaults); ``"tiny"``
    shrinks only the widths. ``config`` overrides ModelConfig fields (``rnn_type``, ``pooling``...).
    """
    pre = PreprocessSettings(stopwords=STOPWORDS)
    normalizer = Normalizer(pre)
    vocab = Vocabulary.fit(normalizer.tokens(t) for t in TITLES)
    dims: dict[str, Any] = {"embedding_dim": 16, "hidden_dim": 16, "fc_dim": 16} if size == "tiny" else {}
    torch.manual_seed(seed)
    model = TextClassifier(ModelConfig(vocab_size=len(vocab), num_classes=4, **(dims | config))).eval()
    return write_artifact(
        artifacts_dir,
        model=model,
        vocab=vocab,
        labels=LabelEncoder(CATEGORIES),
        preprocessing=pre,
        metrics={"test": {"accuracy": 0.25, "macro_f1": 0.2}},
        train_config={},
        version=version,
    )


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One valid version, ``v1``."""
    root = tmp_path_factory.mktemp("artifacts")
    make_artifact(root, seed=0, version="20260101T000000Z-000001")
    return root


@pytest.fixture(scope="session")
def big_artifacts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A default-sized model (slower per batch: makes queues and drains observable)."""
    root = tmp_path_factory.mktemp("artifacts-big")
    make_artifact(root, seed=1, version="20260101T000000Z-000002", size="default")
    return root


def make_settings(artifacts_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"artifacts_dir": artifacts_dir, "warmup": False, "access_log": False}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def client(artifacts_dir: Path) -> Iterator[TestClient]:
    """The app in-process over httpx (lifespan run), admin disabled."""
    with TestClient(create_app(make_settings(artifacts_dir, max_texts_per_request=16, max_text_chars=500))) as c:
        yield c
