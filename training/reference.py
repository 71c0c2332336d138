"""The drift reference stored in metrics.json: what the test split's inputs and outputs look like.

The service counts the same quantities on live traffic with the same definitions
(``contract.drift``), so an operator can compare the two directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from contract.drift import CONFIDENCE_BUCKETS, TOKEN_LENGTH_QUANTILES, confidence_histogram, count_inputs


def drift_reference(
    tokens: Sequence[Sequence[str]], vocabulary: dict[str, int], probs: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Input and output statistics of one split.

    ``tokens`` are the preprocessed tokens per text; ``probs`` the served (temperature-scaled)
    probabilities, one row per text. A token is out of vocabulary when it is not in the word
    vocabulary, even though subword embeddings still give it a vector.
    """
    counts = count_inputs(tokens, vocabulary)
    lengths = np.fromiter((len(t) for t in tokens), dtype=np.float64, count=len(tokens))
    predicted = np.bincount(probs.argmax(axis=1), minlength=len(classes))
    histogram = confidence_histogram(probs.max(axis=1).tolist())
    n = max(1, counts.texts)
    return {
        "split": "test",
        "texts": counts.texts,
        "tokens": counts.tokens,
        "oov_token_rate": counts.oov_tokens / max(1, counts.tokens),
        "empty_rate": counts.empty / n,
        "token_length_quantiles": {str(q): float(np.quantile(lengths, q)) for q in TOKEN_LENGTH_QUANTILES},
        "predicted_label_distribution": {c: int(k) / n for c, k in zip(classes, predicted, strict=True)},
        "confidence_buckets": list(CONFIDENCE_BUCKETS),
        "confidence_histogram": [k / n for k in histogram],
    }
