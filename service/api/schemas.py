"""Request and response models for the HTTP API (separate, with OpenAPI examples)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from service.http.predict_body import NOT_BLANK

# Examples are real answers of the committed default model (tests/service/test_openapi_examples.py checks them).
EXAMPLE_VERSION = "20261203T195818Z-d29ff4"
EXAMPLE_PROBABILITIES: dict[str, Any] = {"Sports": 0.9911, "World": 0.0068, "Business": 0.0013, "Sci/Tech": 0.0008}


def _predict_request_schema(schema: dict[str, Any]) -> None:
    """State the rules the parser enforces, so the OpenAPI schema is exact (create_app adds the limits)."""
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
    """Exactly one of ``text`` (one headline) or ``texts`` (a list of headlines).

    Publishes the rules of service/http/predict_body.py, which parses every /predict body; it
    validates nothing itself. tests/service/test_predict_body.py holds the two to the same verdicts.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra=_predict_request_schema)

    text: StrictStr | None = None
    texts: list[StrictStr] | None = None


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
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"version": "latest"}, {"version": EXAMPLE_VERSION, "action": "add"}]},
    )

    version: StrictStr = Field("latest", description="Version folder name to load, or `latest`.")
    action: Literal["replace", "add", "retire"] = Field(
        "replace",
        description="`replace` the default version; `add` a version served beside the others (requests pick it "
        "by name); `retire` a version added before (not the default, the canary or the shadow).",
    )


class ReloadResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "previous_version": "20261128T090000Z-aa11bb",
                    "model_version": EXAMPLE_VERSION,
                    "versions": [EXAMPLE_VERSION],
                }
            ]
        }
    )

    previous_version: str | None = Field(description="The default version before.")
    model_version: str = Field(description="The default version now.")
    versions: list[str] = Field(description="Every version served now, the default first.")


class ModelInfo(BaseModel):
    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "version": EXAMPLE_VERSION,
                    "created_at": "2026-12-03T19:58:18+00:00",
                    "categories": ["Business", "Sci/Tech", "Sports", "World"],
                    "metrics": {
                        "test": {"overall": {"precision": 0.8252, "recall": 0.824, "f1": 0.8237, "num_samples": 1500}},
                        "best_epoch": 4,
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
                        "vocab_size": 9596,
                        "num_classes": 4,
                        "rnn_type": "bigru",
                        "embedding_dim": 100,
                        "hidden_dim": 64,
                        "fc_dim": 64,
                        "dropout": 0.5,
                        "embedding_dropout": 0.3,
                        "pooling": "last_max",
                        "subword_buckets": 20000,
                        "subword_min_n": 3,
                        "subword_max_n": 5,
                        "subword_max_per_token": 32,
                        "subword_embeddings": True,
                        "subword_head": False,
                        "linear_head": True,
                        "linear_bigram_buckets": 65536,
                        "linear_gram_buckets": 80000,
                        "rnn_scale": 0.508346,
                        "linear_scale": 2.002084,
                        "temperature": 0.999984,
                    },
                    "preprocessing": {
                        "lowercase": True,
                        "remove_stopwords": False,
                        "stopword_count": 0,
                        "vocab_size": 9596,
                    },
                    "device": "cpu",
                    "versions": [EXAMPLE_VERSION],
                    "routing": {"default": EXAMPLE_VERSION, "canary": None, "shadow": None},
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
    versions: list[str] = Field(description="Every version served, the default (described here) first.")
    routing: dict[str, Any] = Field(
        description="`default` version; `canary`: {version, percent} or null; `shadow`: a version or null."
    )


class HealthResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ready", "model_version": EXAMPLE_VERSION}]})

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
