"""The vectorised counters the service uses agree with the reference definitions training uses."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from contract.drift import CONFIDENCE_BUCKETS, confidence_bin_counts, confidence_histogram, count_encoded, count_inputs
from contract.text import Normalizer, PreprocessSettings, TextEncoder, Vocabulary


def test_count_encoded_equals_count_inputs_on_the_sample(news_csv: Path) -> None:
    with news_csv.open(newline="", encoding="utf-8") as fh:
        titles = [row["title"] for row in csv.DictReader(fh)]
    settings = PreprocessSettings(stopwords=("the", "a", "of", "to", "in"))
    normalizer = Normalizer(settings)
    # A vocabulary from half the titles, so the other half has OOV tokens; plus texts that
    # preprocess to nothing (empty) and all-OOV texts.
    vocab = Vocabulary.fit(normalizer.tokens(t) for t in titles[::2])
    texts = [*titles, "the of a", "(Reuters)", "", "zzqx blorf", "UNK unk pad"]
    encoder = TextEncoder(settings, vocab)
    encoded = [encoder.encode(t) for t in texts]
    fast = count_encoded([ids for ids, _ in encoded], [empty for _, empty in encoded])
    reference = count_inputs((normalizer.tokens(t) for t in texts), vocab.stoi)
    assert fast == reference
    assert reference.empty >= 3 and 0 < reference.oov_tokens < reference.tokens
    # With subword features each token is a tuple (word index, n-gram ids...); same counts.
    with_subwords = [[(i, 7 + i % 5, 3) for i in ids] for ids, _ in encoded]
    assert count_encoded(with_subwords, [empty for _, empty in encoded]) == reference


def test_confidence_bin_counts_equals_confidence_histogram() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            rng.uniform(0.25, 1.0, 5000).astype(np.float32),
            np.asarray(CONFIDENCE_BUCKETS, dtype=np.float32),  # float32 edges land just above or below
            np.asarray([0.25, 1.0, np.nextafter(np.float32(1.0), np.float32(2.0))], dtype=np.float32),
        ]
    )
    assert confidence_bin_counts(values).tolist() == confidence_histogram(values.tolist())
    assert confidence_bin_counts(np.asarray(CONFIDENCE_BUCKETS)).tolist() == [1] * len(CONFIDENCE_BUCKETS)
