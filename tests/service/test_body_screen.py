"""The bounded /predict body screen and the bounded error bodies."""

from __future__ import annotations

import json

import pytest

from service.errors import MAX_ERROR_BODY_BYTES, InvalidRequest, MalformedBody, error_body, summarize_validation_errors
from service.http.predict_body import SMALL_BODY_BYTES, screen_predict_body

PAD = " " * SMALL_BODY_BYTES  # whitespace makes a body large enough to be screened


def _big(obj: object) -> bytes:
    return (json.dumps(obj) + PAD).encode()


@pytest.mark.parametrize(
    ("body", "kind", "words"),
    [
        (_big({"texts": [1] * 1_000_000}), InvalidRequest, "too many texts"),
        (_big({"texts": ["ok", {"a": [1] * 10_000}]}), InvalidRequest, "body.texts.1: Input should be a valid string"),
        (_big({"text": [1, 2]}), InvalidRequest, "body.text: Input should be a valid string"),
        (_big({"lang": {"x": 1}, "text": "a"}), InvalidRequest, "body.lang: Extra inputs are not permitted"),
        (_big({f"k{i}": 1 for i in range(50)}), InvalidRequest, "only 'text' or 'texts'"),
        (_big({"texts": ["a" * 5000]}), InvalidRequest, "text too long"),
        ('{"text": "Oil climbs"}'.encode("utf-16"), MalformedBody, "not UTF-8"),
        ('{"text": "Oil climbs"}'.encode("utf-32"), MalformedBody, "not UTF-8"),
    ],
)
def test_screen_refuses_what_no_valid_request_holds(body: bytes, kind: type, words: str) -> None:
    error = screen_predict_body(body, max_texts=256, max_chars=1000)
    assert isinstance(error, kind) and words in error.message, error and error.message


@pytest.mark.parametrize(
    "body",
    [
        _big({"texts": ["Oil climbs"] * 256}),
        _big({"text": "Oil climbs"}),
        _big({"texts": ["ok", 1, None]}),  # scalars: pydantic names each one
        b'{"texts": ["ok",',  # malformed JSON: the parser's own 400
        b'{"text": "Oil climbs", "lang": "en"}',  # small: pydantic's exact messages
    ],
)
def test_screen_passes_everything_else_to_the_parser(body: bytes) -> None:
    assert screen_predict_body(body, max_texts=256, max_chars=1000) is None


def test_summary_lists_ten_counts_all_and_stays_small() -> None:
    errors = ({"loc": ("body", "texts", i), "msg": "x" * 10_000, "type": "string_type"} for i in range(100_000))
    message, details = summarize_validation_errors(errors)
    assert len(details) == 10 and "(and 99997 more; 100000 errors in all)" in message
    assert len(error_body("invalid_request", message, details)) <= MAX_ERROR_BODY_BYTES


def test_error_body_is_capped_whatever_it_is_given() -> None:
    body = error_body("invalid_request", "m" * 100_000, [{"loc": ["body", i], "chars": 5000} for i in range(10_000)])
    assert len(body) <= MAX_ERROR_BODY_BYTES and json.loads(body)["error"]["details"]
