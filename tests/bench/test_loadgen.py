"""The load generator's statistics: nearest-rank percentiles and the summary counts."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from bench.loadgen import encode_request, percentile, summarize, text_groups


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0, 1.0), (1, 1.0), (50, 50.0), (95, 95.0), (99, 99.0), (99.5, 100.0), (100, 100.0)],
)
def test_percentile_is_nearest_rank(q: float, expected: float) -> None:
    values = [float(v) for v in range(100, 0, -1)]  # unsorted on purpose
    assert percentile(values, q) == expected


def test_percentile_edge_cases() -> None:
    assert math.isnan(percentile([], 50))
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize_counts_every_answer_and_every_error() -> None:
    result = summarize(
        [0.001, 0.002, 0.003, 0.004],
        Counter({200: 3, 503: 1}),
        Counter({"read": 2}),
        2.0,
        missing_retry_after=1,
    )
    assert result["requests"] == 4
    assert result["rps"] == 2.0
    assert result["statuses"] == {"200": 3, "503": 1}
    assert result["errors"] == {"connect": 0, "read": 2, "write": 0, "timeout": 0}
    assert result["missing_retry_after"] == 1
    assert result["latency_ms"]["p50"] == pytest.approx(2.0)
    assert result["latency_ms"]["p99"] == pytest.approx(4.0)
    assert result["latency_ms"]["mean"] == pytest.approx(2.5)


def test_encoded_post_has_exact_content_length() -> None:
    raw = encode_request("POST", "/predict", b'{"text": "x"}', 8000)
    head, body = raw.split(b"\r\n\r\n", 1)
    assert b"Content-Length: 13" in head and body == b'{"text": "x"}'
    assert encode_request("GET", "/health/live", None, 8000).endswith(b"\r\n\r\n")


def test_text_groups_are_full_consecutive_and_capped() -> None:
    titles = [str(i) for i in range(10)]
    assert text_groups(titles, size=4) == [["0", "1", "2", "3"], ["4", "5", "6", "7"]]
    assert text_groups(titles, size=3, most=2) == [["0", "1", "2"], ["3", "4", "5"]]
    assert text_groups(titles, size=11) == []
