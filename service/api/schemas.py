"""Request and response models for the HTTP API (separate, with OpenAPI examples)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator, model_validator

# Examples are real answers of the committed default model (tests/service/test_openapi_examples.py checks them).
EXAMPLE_VERSION = "20261129T184058Z-040fda"
EXAMPLE_PROBABILITIES: dict[str, Any] = {"Sports": 0.9453, "World": 0.0356, "Sci/Tech": 0.0105, "Business": 0.0087}

# The one whitespace rule, used verbatim as the OpenAPI pattern and by the validators. A text is
# blank when every character is whitespace. "Whitespace" is the union of Python's str.isspace()
# and ECMAScript's \s (which JSON-schema patterns use): the two disagree on U+001C-U+001F and
# U+0085 (Python only) and U+FEFF (ECMAScript only), so the set is spelled out instead of
# writing \s, which would mean something different to the validator and to a schema client.
WHITESPACE = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
NOT_BLANK = f"[^{WHITESPACE}]"  # JSON-schema pattern (a search): at least one non-whitespace character
_NOT_BLANK = re.compile(NOT_BLANK)


def is_blank(text: str) -> bool:
    """True when ``text`` has no character outside :data:`WHITESPACE` (the schema's pattern fails)."""
    return _NOT_BLANK.search(text) is None


def _check_text(text: str) -> str:
    if is_blank(text):
        raise ValueError("text must not be empty or whitespace only")
    return text


# More problems of one kind than this are reported as one error with a count: pydantic would
# build one error object per bad list item or extra key, which for a 3 MB body of 1.5 million
# numbers took 19 s and 2 GB before the 422 went out (issue 8).
MAX_ITEM_ERRORS = 10


def _refuse_mass_errors(data: dict[Any, Any]) -> None:
    """One error for many non-string items or unknown fields, found in one C-speed pass."""
    extra = [key for key in data if key not in ("text", "texts")]
    if len(extra) > MAX_ITEM_ERRORS:
        raise ValueError(f"{len(extra)} unknown fields (first {str(extra[0])[:40]!r}); only 'text' or 'texts' allowed")
    texts = data.get("texts")
    if isinstance(texts, list) and not all(type(t) is str for t in texts):
        bad = sum(type(t) is not str for t in texts)
        if bad > MAX_ITEM_ERRORS:
            first = next(i for i, t in enumerate(texts) if type(t) is not str)
            raise ValueError(f"texts: {bad} of {len(texts)} items are not strings (the first at index {first})")


def _predict_request_schema(schema: dict[str, Any]) -> None:
    """State the rules the validators enforce, so the OpenAPI schema is exact (create_app adds the limits)."""
    text = {"type": "string", "minLength": 1, "pattern": NOT_BLANK}
    schema["properties"] = {
        "text": {**text, "title": "Text", "description": "One headline (not blank)."},
        "texts": {
            "type": "array",
            "minItems": 1,
            "items": text,
            "title": "Texts",
            "description": "Several headlines (none blank), answered in the same order.",
        },
    }
    schema["oneOf"] = [{"required": ["text"]}, {"required": ["texts"]}]
    schema["examples"] = [
        {"text": "Federer wins his fifth Wimbledon title"},
        {"texts": ["Oil prices climb as OPEC cuts output", "NASA probe sends first images from Mars"]},
    ]


class PredictRequest(BaseModel):
    """Exactly one of ``text`` (one headline) or ``texts`` (a list of headlines)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_predict_request_schema)

    # None only means "absent": an explicit null is rejected below.
    text: StrictStr | None = None
    texts: list[StrictStr] | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("text", "texts"):
                if key in data and data[key] is None:
                    raise ValueError(f"'{key}' must not be null")
            _refuse_mass_errors(data)
        return data

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str | None) -> str | None:
        return None if value is None else _check_text(value)

    @field_validator("texts")
    @classmethod
    def _texts_not_blank(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("texts must not be an empty list")
        for i, text in enumerate(value):
            if is_blank(text):
                raise ValueError(f"texts[{i}] must not be empty or whitespace only")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> PredictRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' or 'texts'")
        return self

    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


class TextPrediction(BaseModel):
    label: str = Field(description="The most probable category.")
    probabilities: dict[str, float] = Field(
        description="Every category with its probability, most probable first; sums to 1."
    )
    empty: bool = Field(
        description="True when nothing was left of the text after preprocessing (the answer is then a prior guess)."
    )


class PredictResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model_version": EXAMPLE_VERSION,
                    "predictions": [{"label": "Sports", "probabilities": EXAMPLE_PROBABILITIES, "empty": False}],
                }
            ]
        }
    )

    model_version: str = Field(description="Version of the model that produced these predictions.")
    predictions: list[TextPrediction] = Field(description="One prediction per input text, in request order.")


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"version": "latest"}]})

    version: StrictStr = Field("latest", description="Version folder name to load, or `latest`.")


class ReloadResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"previous_version": "20261128T090000Z-aa11bb", "model_version": EXAMPLE_VERSION}]
        }
    )

    previous_version: str
    model_version: str


class ModelInfo(BaseModel):
    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "version": EXAMPLE_VERSION,
                    "created_at": "2026-11-29T18:40:58+00:00",
                    "categories": ["Business", "Sci/Tech", "Sports", "World"],
                    "metrics": {
                        "test": {"overall": {"precision": 0.8069, "recall": 0.8053, "f1": 0.8047, "num_samples": 1500}},
                        "best_epoch": 8,
                    },
                    "reference": {
                        "split": "test",
                        "texts": 1500,
                        "tokens": 12000,
                        "oov_token_rate": 0.09,
                        "empty_rate": 0.0,
                        "token_length_quantiles": {"0.5": 8, "0.9": 11, "0.99": 14},
                        "predicted_label_distribution": {
                            "Business": 0.25,
                            "Sci/Tech": 0.26,
                            "Sports": 0.24,
                            "World": 0.25,
                        },
                        "confidence_buckets": [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0],
                        "confidence_histogram": [0.0, 0.02, 0.05, 0.06, 0.07, 0.09, 0.15, 0.16, 0.25, 0.15],
                    },
                    "reference_note": None,
                    "model_config": {
                        "vocab_size": 9562,
                        "num_classes": 4,
                        "rnn_type": "bigru",
                        "embedding_dim": 100,
                        "hidden_dim": 64,
                        "fc_dim": 64,
                        "dropout": 0.5,
                        "embedding_dropout": 0.3,
                        "pooling": "last_max",
                        "subword_buckets": 0,
                        "subword_min_n": 3,
                        "subword_max_n": 5,
                        "subword_max_per_token": 32,
                        "temperature": 1.048546,
                    },
                    "preprocessing": {
                        "lowercase": True,
                        "remove_stopwords": False,
                        "stopword_count": 0,
                        "vocab_size": 9562,
                    },
                    "device": "cpu",
                }
            ]
        },
    )

    version: str
    created_at: str | None
    categories: list[str]
    metrics: dict[str, Any]
    reference: dict[str, Any] | None = Field(
        description="Input and output statistics of the test split (metrics.json 'reference'), the baseline for "
        "the live drift counters on /metrics; null when the artifact has none."
    )
    reference_note: str | None = Field(
        description="Why the reference is missing or partly unusable; null when it is complete."
    )
    model_config_: dict[str, Any] = Field(alias="model_config")
    preprocessing: dict[str, Any]
    device: str


class HealthResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"status": "ready", "model_version": EXAMPLE_VERSION}]}
    )

    status: str
    model_version: str | None = None


class ErrorBody(BaseModel):
    type: str = Field(description="Machine-readable error kind, e.g. `invalid_request`, `overloaded`.")
    message: str = Field(description="What went wrong, in words.")
    details: list[Any] = Field(default_factory=list, description="Per-field problems, when there are several.")


class ErrorResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "type": "invalid_request",
                        "message": "body.text: text must not be empty or whitespace only",
                        "details": [
                            {
                                "loc": ["body", "text"],
                                "msg": "text must not be empty or whitespace only",
                                "type": "value_error",
                            }
                        ],
                    }
                }
            ]
        }
    )

    error: ErrorBody
