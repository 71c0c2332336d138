"""The linear head: the model's tables compute exactly the linear model fitted on the bags."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contract.model import ModelConfig, TextClassifier
from contract.text import SubwordHasher, Vocabulary
from training.data import encode_matrix, subword_table
from training.linear_head import count_bags, fit_linear_head, load_linear_head_, tfidf

TOPICS = {
    0: ["oil", "prices", "barrel", "crude", "opec", "energy"],
    1: ["team", "wins", "match", "league", "coach", "season"],
    2: ["chip", "software", "microsoft", "apple", "internet", "web"],
}


def _corpus(n: int = 150) -> tuple[list[list[str]], np.ndarray]:
    rng = np.random.default_rng(0)
    tokens, targets = [], []
    for i in range(n):
        label = i % 3
        words = list(rng.choice(TOPICS[label], size=rng.integers(2, 6)))
        words += list(rng.choice(TOPICS[(label + 1) % 3], size=rng.integers(0, 2)))  # some noise
        tokens.append([str(w) for w in words])
        targets.append(label)
    return tokens, np.asarray(targets)


@pytest.mark.parametrize("own_grams", [0, 3 * 53])
def test_the_models_linear_logits_are_the_fitted_svms_scores(own_grams):
    """Also with the head's own n-gram buckets (``own_grams``), which the token table then holds."""
    tokens, targets = _corpus()
    fit_rows, val_rows = np.arange(0, 100), np.arange(100, 150)
    tokens[120] = [*tokens[120], "opecs", "zzzz"]  # words the fit rows never saw, their n-grams known or not
    vocab = Vocabulary.fit(tokens[i] for i in fit_rows)
    grams = own_grams or 53
    extended, table = subword_table(vocab, tokens, SubwordHasher(grams))
    ids, _ = encode_matrix(tokens, extended)
    bags = count_bags(ids, table, len(vocab), grams=grams, bigrams=17)
    head = fit_linear_head(bags, targets, fit_rows, val_rows)
    assert head.c in (0.1, 0.3, 1.0) and head.val_f1 is not None and head.val_f1 > 0.8

    config = ModelConfig(
        len(vocab), 3, embedding_dim=8, hidden_dim=8, fc_dim=8, subword_buckets=53, linear_head=True,
        linear_bigram_buckets=17, linear_gram_buckets=own_grams,
    )  # fmt: skip
    model = TextClassifier(config).eval()
    load_linear_head_(model, head, bags)
    with torch.inference_mode():
        logits = model.linear_logits(torch.from_numpy(table[ids]))
    expected = tfidf(bags, np.arange(len(tokens)), head.idf) @ head.coef.T + head.intercept
    assert np.allclose(logits.numpy(), expected, atol=1e-5)
    # The same answer from the folded tables, with only the unknown words' n-grams in the input.
    model.fold_word_ngrams(vocab)
    short = table[ids].copy()
    short[short[..., 0] > 1, 1:] = 0
    with torch.inference_mode():
        assert torch.allclose(model.linear_logits(torch.from_numpy(short)), logits, atol=1e-5)


def test_bags_count_words_bigrams_and_ngrams_and_skip_unknown_words():
    tokens = [["oil", "prices", "oil"], ["zzzz"]]
    vocab = Vocabulary.fit(tokens[:1])
    hasher = SubwordHasher(11)
    extended, table = subword_table(vocab, tokens, hasher)
    ids, _ = encode_matrix(tokens, extended)
    bags = count_bags(ids, table, len(vocab), grams=11, bigrams=7)
    counts = bags.counts.toarray()
    oil = vocab.stoi["oil"]
    assert counts[0, oil] == 2 and counts[0, vocab.stoi["prices"]] == 1
    assert counts[0, len(vocab) : bags.char_start].sum() == 2  # two bigrams
    assert counts[0, bags.char_start :].sum() == 2 * len(hasher("oil")) + len(hasher("prices"))
    assert counts[1, : bags.char_start].sum() == 0 and counts[1, bags.char_start :].sum() == len(hasher("zzzz"))
