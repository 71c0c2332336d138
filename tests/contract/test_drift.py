from __future__ import annotations

from contract.drift import CONFIDENCE_BUCKETS, confidence_histogram, count_inputs


def test_count_inputs_counts_oov_and_empty() -> None:
    vocab = {"<PAD>": 0, "<UNK>": 1, "oil": 2, "prices": 3}
    counts = count_inputs([["oil", "prices", "soar"], [], ["zzz"]], vocab)
    assert (counts.texts, counts.tokens, counts.oov_tokens, counts.empty) == (3, 4, 2, 1)


def test_confidence_histogram_bins_are_upper_inclusive() -> None:
    hist = confidence_histogram([0.25, 0.3, 0.31, 0.999, 1.0])
    assert len(hist) == len(CONFIDENCE_BUCKETS) and sum(hist) == 5
    assert hist[0] == 2 and hist[1] == 1 and hist[-1] == 2
