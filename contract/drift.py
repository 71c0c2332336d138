"""Input and output statistics that training stores as a reference and serving counts live.

Both halves use these definitions, so a live rate on ``/metrics`` and the reference in
``metrics.json`` measure the same thing: an OOV token is a token produced by preprocessing
that is not in the model's vocabulary; an empty input is one with no tokens left after
preprocessing; confidence is the top-class probability served to the client.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np

from contract.text import UNK_INDEX

# Upper bounds ("le") of the top-class confidence histogram, shared by the reference in
# metrics.json and the Prometheus histogram hc_prediction_confidence. With four classes the
# top probability is >= 0.25, so the bins concentrate where a classifier's confidence lives.
CONFIDENCE_BUCKETS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
TOKEN_LENGTH_QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.99)


@dataclass(frozen=True)
class InputCounts:
    """Token-level counts for a group of texts (after preprocessing, before padding)."""

    texts: int
    tokens: int
    oov_tokens: int
    empty: int


def count_inputs(tokens_per_text: Iterable[Sequence[str]], vocabulary: dict[str, int]) -> InputCounts:
    """Count texts, tokens, tokens outside ``vocabulary`` and texts with no tokens."""
    texts = tokens = oov = empty = 0
    for text_tokens in tokens_per_text:
        texts += 1
        tokens += len(text_tokens)
        oov += sum(1 for t in text_tokens if t not in vocabulary)
        empty += not text_tokens
    return InputCounts(texts=texts, tokens=tokens, oov_tokens=oov, empty=empty)


def count_encoded(sequences: Sequence[Sequence[Any]], empty: Sequence[bool]) -> InputCounts:
    """:func:`count_inputs` from already encoded texts, without a per-token Python loop.

    Tokens are ``[a-z0-9]+`` runs, so no real token is spelled ``<UNK>``: a token is OOV
    exactly when its word index is ``UNK_INDEX``. A token is encoded either as its word index
    or, with subword features, as a tuple whose first item is the word index. An empty text
    is encoded as one ``<UNK>`` (see ``TextEncoder.encode``), which is neither a token nor an
    OOV token.
    """
    n_empty = sum(empty)
    items = sum(map(len, sequences))
    if sequences and isinstance(sequences[0][0], tuple):
        unk = list(map(itemgetter(0), chain.from_iterable(sequences))).count(UNK_INDEX)
    else:
        unk = sum(s.count(UNK_INDEX) for s in sequences)
    return InputCounts(texts=len(sequences), tokens=items - n_empty, oov_tokens=unk - n_empty, empty=n_empty)


def confidence_bin_counts(confidences: np.ndarray) -> np.ndarray:
    """:func:`confidence_histogram` for an array (int64 counts per bin), vectorised for per-batch counting."""
    bins = np.searchsorted(np.asarray(CONFIDENCE_BUCKETS), confidences, side="left")
    return np.bincount(np.minimum(bins, len(CONFIDENCE_BUCKETS) - 1), minlength=len(CONFIDENCE_BUCKETS))


def confidence_histogram(confidences: Iterable[float]) -> list[int]:
    """Non-cumulative counts per ``CONFIDENCE_BUCKETS`` bin (bin i holds edges[i-1] < c <= edges[i])."""
    counts = [0] * len(CONFIDENCE_BUCKETS)
    for c in confidences:
        for i, edge in enumerate(CONFIDENCE_BUCKETS):
            if c <= edge or i == len(CONFIDENCE_BUCKETS) - 1:
                counts[i] += 1
                break
    return counts
