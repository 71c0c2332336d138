"""The serving recurrence computes what ``nn.GRU`` computes: every pooling, one or two
directions, padded batches, unknown words with n-grams, and saturated gates."""

from __future__ import annotations

import pytest
import torch

from contract.model import POOLINGS, ModelConfig, TextClassifier, pad_batch
from contract.text import PreprocessSettings, TextEncoder, Vocabulary

WORDS = [f"word{i}" for i in range(40)]
ROWS = [[2, 3, 4, 5, 6, 7, 8, 9], [10], [11, 12, 13], [14, 15, 2, 3, 41, 40], [5, 5, 5, 5, 5, 5, 5, 5]]


def _model(rnn_type: str, pooling: str, **extra: object) -> TextClassifier:
    torch.manual_seed(1)
    config = ModelConfig(
        len(WORDS) + 2, 4, rnn_type=rnn_type, embedding_dim=12, hidden_dim=16, fc_dim=8, pooling=pooling, **extra
    )
    model = TextClassifier(config).eval()
    with torch.no_grad():
        for parameter in model.rnn.parameters():
            parameter.normal_(0.0, 0.5)  # biases too: they take another route through the fused weights
    return model


def _both_ways(model: TextClassifier, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits from the fused recurrence and from the packed ``nn.GRU``."""
    assert model.fused is not None
    with torch.inference_mode():
        fused = model(ids, lengths)
        kept, model.fused = model.fused, None
        try:
            reference = model(ids, lengths, pack=True)
        finally:
            model.fused = kept
    return fused, reference


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("rnn_type", ["gru", "bigru"])
def test_fused_recurrence_matches_packed_gru_on_a_padded_batch(rnn_type: str, pooling: str) -> None:
    model = _model(rnn_type, pooling)
    model.fuse_recurrence()
    fused, reference = _both_ways(model, *pad_batch(ROWS))
    torch.testing.assert_close(fused, reference, atol=2e-6, rtol=0)
    # Equal lengths take another branch (no reversal by length, no mask).
    fused, reference = _both_ways(model, *pad_batch([ROWS[0], ROWS[4]]))
    torch.testing.assert_close(fused, reference, atol=2e-6, rtol=0)


def test_saturated_gates_stay_finite_and_exact() -> None:
    model = _model("bigru", "last_max")
    with torch.no_grad():
        model.embedding.weight.mul_(40.0)
    model.fuse_recurrence()
    fused, reference = _both_ways(model, *pad_batch(ROWS))
    assert torch.isfinite(fused).all()
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=0)


def test_unknown_words_with_ngrams_take_their_own_gates_in_both_directions() -> None:
    vocab = Vocabulary(["<PAD>", "<UNK>", *WORDS])
    model = _model("bigru", "last_max", subword_buckets=97)
    with torch.no_grad():
        model.embedding.weight[1:].normal_()
        assert model.subword_embedding is not None
        model.subword_embedding.weight[1:].normal_()
    model.fold_word_ngrams(vocab)
    model.fuse_recurrence()
    encoder = TextEncoder(PreprocessSettings(), vocab, model.config.subword_hasher(), known_word_grams=False)
    texts = ["word1 zzqx word2 word3 word4", "qwerty", "word5 word6 plonk", "", "word7 word8 word9 word1 word2 word3"]
    ids, lengths = pad_batch(encoder.encode_many(texts))
    assert ids.shape[-1] > 1  # unknown words brought n-gram columns
    fused, reference = _both_ways(model, ids, lengths)
    torch.testing.assert_close(fused, reference, atol=2e-6, rtol=0)


def test_plain_rnn_and_unfolded_ngram_models_keep_torchs_recurrence() -> None:
    rnn = _model("rnn", "last_max")
    rnn.fuse_recurrence()
    assert rnn.fused is None
    unfolded = _model("bigru", "last_max", subword_buckets=97)
    unfolded.fuse_recurrence()  # known words still need their n-grams at every call
    assert unfolded.fused is None


def test_training_mode_runs_torchs_recurrence_on_the_current_weights() -> None:
    model = _model("bigru", "last_max")
    model.fuse_recurrence()
    ids, lengths = pad_batch(ROWS)
    with torch.no_grad():
        for parameter in model.rnn.parameters():
            parameter.add_(0.3)  # the fused copy no longer follows
        model.dropout.p = model.embedding_dropout.p = 0.0
        trained = model.train()(ids, lengths)
        model.eval()
        kept, model.fused = model.fused, None
        current = model(ids, lengths)
        model.fused = kept
    torch.testing.assert_close(trained, current, atol=2e-6, rtol=0)
