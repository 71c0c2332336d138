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
from contract.text import LabelEncoder, PreprocessSettings, TextEncoder, Vocabulary


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
    saved, reloaded = model.state_dict(), loaded.model.state_dict()
    assert saved.keys() == reloaded.keys() and all(torch.equal(saved[k], reloaded[k]) for k in saved)
    # The loaded model serves through the fused recurrence (contract/recurrence.py): float rounding apart.
    served, kept = predict_proba(loaded.model, ids, lengths), predict_proba(model, ids, lengths)
    torch.testing.assert_close(served, kept, atol=1e-6, rtol=0)
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


def _rewrite(folder, name, content):
    """Replace one file and fix its manifest checksum, as an older writer would have produced it."""
    from contract.artifact import sha256_file

    (folder / name).write_text(json.dumps(content))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name] = sha256_file(folder / name)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_artifact_written_before_subwords_and_calibration_still_loads(tmp_path, model):
    folder = _write(tmp_path, model, "20260101T000000Z-aaaaaa")
    old = {k: v for k, v in model.config.to_dict().items() if not k.startswith("subword_") and k != "temperature"}
    _rewrite(folder, "model_config.json", old)
    loaded = load_artifact(folder)
    assert loaded.temperature == 1.0 and loaded.config.subword_buckets == 0
    assert loaded.text_encoder().subwords is None
    ids, lengths = pad_batch([[2, 3, 4], [5]])
    assert torch.equal(predict_proba(loaded.model, ids, lengths), predict_proba(model, ids, lengths))


def test_linear_head_artifact_round_trips_with_its_scales(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=12, num_classes=3, embedding_dim=8, hidden_dim=8, subword_buckets=64, linear_head=True,
        linear_bigram_buckets=16, rnn_scale=0.4, linear_scale=1.6, temperature=1.2,
    )  # fmt: skip
    model = TextClassifier(config).eval()
    with torch.no_grad():
        for table in (model.linear_words, model.linear_grams, model.linear_bigrams):
            assert table is not None
            table.weight[1:].uniform_(0.5, 1.5)  # the last column, the idf squared, must be positive
    folder = _write(tmp_path, model, "20260101T000000Z-aaaaaa")
    loaded = load_artifact(folder)
    assert loaded.config == config and loaded.model.folded_linear is not None
    texts = ["w1 w2 unseenword w3", "w3", ""]
    full = TextEncoder(loaded.preprocessing, loaded.vocab, config.subword_hasher())
    expected = predict_proba(model, *pad_batch(full.encode_many(texts)))
    ids, lengths = pad_batch(loaded.text_encoder().encode_many(texts))
    assert torch.allclose(predict_proba(loaded.model, ids, lengths), expected, atol=1e-6)


@pytest.mark.parametrize(("embeddings", "head"), [(True, False), (False, True), (True, True)])
def test_subword_artifact_rebuilds_its_tokenizer_and_temperature(tmp_path, embeddings, head):
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=12, num_classes=3, embedding_dim=8, hidden_dim=8, subword_buckets=64,
        subword_embeddings=embeddings, subword_head=head,
    )  # fmt: skip
    model = TextClassifier(config).eval()
    if head:
        assert model.head_grams is not None
        with torch.no_grad():
            model.head_grams.weight[1:].normal_()  # a trained head, not the zeros it starts at
    model.config = ModelConfig(**{**config.to_dict(), "temperature": 1.7})
    folder = _write(tmp_path, model, "20260101T000000Z-aaaaaa")
    loaded = load_artifact(folder)
    assert loaded.temperature == 1.7
    encoder = loaded.text_encoder()
    assert encoder.subwords is not None and encoder.subwords.buckets == 64
    # The loaded model looks known words up in its folded vocabulary (not with the wide head,
    # which reads every token's n-grams); the model as written reads the full encoding.
    assert (loaded.model.folded is not None) == (embeddings and not head) == (not encoder.known_word_grams)
    texts = ["w1 w2 unseenword", "w3"]
    ids, lengths = pad_batch(encoder.encode_many(texts))
    assert ids.dim() == 3
    full = TextEncoder(loaded.preprocessing, loaded.vocab, config.subword_hasher())
    expected = predict_proba(model, *pad_batch(full.encode_many(texts)))
    assert torch.allclose(predict_proba(loaded.model, ids, lengths), expected, atol=1e-6)
