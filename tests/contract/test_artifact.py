"""Artifact contract units: compact weights, verification, version resolution."""

from __future__ import annotations

import json

import pytest
import torch

from contract.artifact import (
    ArtifactError,
    load_artifact,
    resolve_version,
    round_weights_,
    write_artifact,
)
from contract.model import ModelConfig, TextClassifier, pad_batch, predict_proba
from contract.text import LabelEncoder, PreprocessSettings, Vocabulary


def _write(root, model, version, dtype="float32"):
    vocab = Vocabulary(["<PAD>", "<UNK>", *[f"w{i}" for i in range(model.config.vocab_size - 2)]])
    return write_artifact(
        root,
        model=model,
        vocab=vocab,
        labels=LabelEncoder(["a", "b", "c"]),
        preprocessing=PreprocessSettings(),
        metrics={},
        train_config={},
        version=version,
        weights_dtype=dtype,
    )


@pytest.fixture
def model():
    torch.manual_seed(0)
    return TextClassifier(ModelConfig(vocab_size=500, num_classes=3, embedding_dim=32, hidden_dim=16)).eval()


def test_float16_weights_halve_the_file_and_reload_exactly_after_rounding(tmp_path, model):
    full = _write(tmp_path, model, "20260101T000000Z-aaaaaa")
    round_weights_(model, "float16")
    half = _write(tmp_path, model, "20260101T000001Z-bbbbbb", "float16")
    assert (half / "model.pt").stat().st_size < 0.6 * (full / "model.pt").stat().st_size
    loaded = load_artifact(half)
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    ids, lengths = pad_batch([[2, 3, 4], [5], [6, 7]])
    assert torch.equal(predict_proba(loaded.model, ids, lengths), predict_proba(model, ids, lengths))
    assert json.loads((half / "manifest.json").read_text())["weights_dtype"] == "float16"


def test_unknown_weights_dtype_is_refused(tmp_path, model):
    with pytest.raises(ArtifactError, match="weights dtype"):
        _write(tmp_path, model, "20260101T000000Z-aaaaaa", "int8")
    assert list(tmp_path.iterdir()) == []


def test_latest_skips_a_newer_broken_version(tmp_path, model):
    good = _write(tmp_path, model, "20260101T000000Z-aaaaaa")
    bad = _write(tmp_path, model, "20260102T000000Z-bbbbbb")
    (bad / "vocab.json").write_text('{"tokens": ["<PAD>", "<UNK>"]}')
    assert resolve_version(tmp_path) == good
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        load_artifact(bad)


def test_missing_file_is_named(tmp_path, model):
    folder = _write(tmp_path, model, "20260101T000000Z-aaaaaa")
    (folder / "labels.json").unlink()
    with pytest.raises(ArtifactError, match="missing file labels.json"):
        load_artifact(folder)
