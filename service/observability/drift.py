"""Live drift counters on /metrics, and the served artifact's reference beside them.

Counting happens once per batch (a few numpy calls on arrays the predictor already has),
not once per text: the per-batch totals are kept in plain numbers under one lock and turned
into Prometheus samples only when ``/metrics`` is scraped. ``prometheus_client``'s own
Histogram would cost one locked ``observe`` per text.

The reference (``metrics.json`` → ``reference``, written by training on its test split) is
exported as ``hc_reference_*`` gauges, so an alert compares live traffic with the model
actually being served, whichever version that is, without hard-coded numbers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from contract.drift import CONFIDENCE_BUCKETS, InputCounts, confidence_bin_counts

REFERENCE_KEY = "reference"
_BUCKET_LABELS = [floatToGoString(edge) for edge in CONFIDENCE_BUCKETS]


def read_reference(metrics: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """The artifact's drift reference and, when it is missing or unusable, why (for GET /model)."""
    reference = metrics.get(REFERENCE_KEY)
    if reference is None:
        return None, (
            "this artifact has no drift reference (no 'reference' section in its metrics.json: it was "
            "trained before training wrote one); retrain it to get one. The live counters on /metrics "
            "work regardless."
        )
    if not isinstance(reference, dict):
        return None, f"the 'reference' section of metrics.json is a {type(reference).__name__}, not an object"
    buckets = reference.get("confidence_buckets")
    if buckets is not None and [float(b) for b in buckets] != list(CONFIDENCE_BUCKETS):
        return reference, (
            f"the reference's confidence_buckets {buckets} differ from the service's {list(CONFIDENCE_BUCKETS)}; "
            "hc_reference_confidence_ratio is not exported"
        )
    return reference, None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class DriftCollector:
    """Per-batch totals of inputs and predictions; a Prometheus collector (``registry.register``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._texts = 0
        self._tokens = 0
        self._oov = 0
        self._empty = 0
        self._labels: dict[str, int] = {}
        self._bins = np.zeros(len(CONFIDENCE_BUCKETS), dtype=np.int64)
        self._confidence_sum = 0.0
        self._reference: dict[str, Any] | None = None

    def observe(self, counts: InputCounts, probabilities: np.ndarray, classes: list[str]) -> None:
        """Add one batch: its input counts and its ``[N, C]`` probabilities (rows = texts)."""
        if probabilities.shape[0] == 0:
            return
        top = probabilities.argmax(axis=1)
        confidence = probabilities[np.arange(len(top)), top]
        per_class = np.bincount(top, minlength=len(classes)).tolist()
        bins = confidence_bin_counts(confidence)
        total = float(confidence.sum())
        with self._lock:
            self._texts += counts.texts
            self._tokens += counts.tokens
            self._oov += counts.oov_tokens
            self._empty += counts.empty
            for label, n in zip(classes, per_class, strict=True):
                if n:
                    self._labels[label] = self._labels.get(label, 0) + n
            self._bins += bins
            self._confidence_sum += total

    def set_model(self, classes: list[str], reference: dict[str, Any] | None) -> None:
        """Announce the served model: every label gets a series (at 0) and its reference is exported."""
        with self._lock:
            for label in classes:
                self._labels.setdefault(label, 0)
            self._reference = reference

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            texts, tokens, oov, empty = self._texts, self._tokens, self._oov, self._empty
            labels = dict(self._labels)
            cumulative = np.cumsum(self._bins).tolist()
            confidence_sum = self._confidence_sum
            reference = self._reference
        yield CounterMetricFamily("hc_input_texts", "Texts classified (drift counters)", value=texts)
        yield CounterMetricFamily("hc_input_tokens", "Tokens after preprocessing, over all classified texts", tokens)
        yield CounterMetricFamily(
            "hc_input_oov_tokens", "Tokens not in the served model's vocabulary (encoded as <UNK>)", oov
        )
        yield CounterMetricFamily("hc_empty_inputs", "Texts with no tokens left after preprocessing", empty)
        predictions = CounterMetricFamily("hc_predictions", "Predictions by top label", labels=["label"])
        for label, n in sorted(labels.items()):
            predictions.add_metric([label], n)
        yield predictions
        yield HistogramMetricFamily(
            "hc_prediction_confidence",
            "Top-class probability of each prediction (buckets = contract.drift.CONFIDENCE_BUCKETS)",
            buckets=[*zip(_BUCKET_LABELS, cumulative, strict=True), ("+Inf", cumulative[-1])],
            sum_value=confidence_sum,
        )
        if reference is not None:
            yield from _reference_gauges(reference)


def _reference_gauges(reference: dict[str, Any]) -> Iterator[Metric]:
    """The served artifact's reference as gauges (a field that is missing or malformed is skipped)."""
    for key, name, doc in (
        ("oov_token_rate", "hc_reference_oov_token_rate", "OOV token rate of the served model's test split"),
        ("empty_rate", "hc_reference_empty_rate", "Empty-after-preprocessing rate of the test split"),
    ):
        value = _number(reference.get(key))
        if value is not None:
            yield GaugeMetricFamily(name, doc, value=value)
    distribution = reference.get("predicted_label_distribution")
    if isinstance(distribution, dict):
        gauge = GaugeMetricFamily(
            "hc_reference_prediction_ratio", "Share of each predicted label on the test split", labels=["label"]
        )
        for label, fraction in sorted(distribution.items()):
            value = _number(fraction)
            if value is not None:
                gauge.add_metric([str(label)], value)
        yield gauge
    histogram = reference.get("confidence_histogram")
    buckets = reference.get("confidence_buckets", list(CONFIDENCE_BUCKETS))
    if (
        isinstance(histogram, list)
        and len(histogram) == len(CONFIDENCE_BUCKETS)
        and all(_number(x) is not None for x in histogram)
        and isinstance(buckets, list)
        and [_number(b) for b in buckets] == list(CONFIDENCE_BUCKETS)
    ):
        # Cumulative, like the live histogram's buckets: share of test predictions with confidence <= le.
        gauge = GaugeMetricFamily(
            "hc_reference_confidence_ratio",
            "Share of test-split predictions with top-class probability <= le",
            labels=["le"],
        )
        for le, share in zip(_BUCKET_LABELS, np.cumsum(np.asarray(histogram, dtype=float)).tolist(), strict=True):
            gauge.add_metric([le], share)
        yield gauge
