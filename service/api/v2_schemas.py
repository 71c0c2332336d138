"""Open Inference Protocol (V2) request and response models, for the OpenAPI document only:
service/http/v2.py parses and renders the bodies."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.api.schemas import EXAMPLE_PROBABILITIES, EXAMPLE_VERSION

_CLASSES: list[Any] = sorted(EXAMPLE_PROBABILITIES)


class ServerMetadata(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"name": "headline-classifier", "version": "0.1.0", "extensions": ["binary_tensor_data"]}]
        }
    )

    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1: any size along that axis.")
    parameters: dict[str, Any] | None = Field(None, description="`classes`: the order of the probabilities.")


class ModelMetadata(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "headline-classifier",
                    "versions": [EXAMPLE_VERSION],
                    "platform": "pytorch",
                    "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
                    "outputs": [
                        {
                            "name": "probabilities",
                            "datatype": "FP32",
                            "shape": [-1, 4],
                            "parameters": {"classes": _CLASSES},
                        },
                        {"name": "label", "datatype": "BYTES", "shape": [-1]},
                        {"name": "empty", "datatype": "BOOL", "shape": [-1]},
                    ],
                    "parameters": {"version": EXAMPLE_VERSION, "default_version": EXAMPLE_VERSION},
                }
            ]
        }
    )

    name: str
    versions: list[str] = Field(description="Every version served, the default first.")
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = Field(description="`version` described here, `default_version`.")


class RequestInput(BaseModel):
    name: str = Field(description="`text`.")
    shape: list[int] = Field(description="`[N]`: the number of texts.")
    datatype: str = Field(description="`BYTES`.")
    parameters: dict[str, Any] | None = None
    data: list[str] | None = Field(
        None, description="The texts (UTF-8); absent when they follow the JSON header as binary data."
    )


class RequestOutput(BaseModel):
    name: str = Field(description="`probabilities`, `label` or `empty`.")
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "42",
                    "inputs": [
                        {
                            "name": "text",
                            "shape": [2],
                            "datatype": "BYTES",
                            "data": ["Federer wins his fifth Wimbledon title", "Oil prices climb as OPEC cuts output"],
                        }
                    ],
                }
            ]
        }
    )

    id: str | None = Field(None, description="Echoed in the answer.")
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = Field(None, description="The outputs to answer with (default: all).")


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any]


class InferenceResponse(BaseModel):
    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "model_name": "headline-classifier",
                    "model_version": EXAMPLE_VERSION,
                    "id": "42",
                    "outputs": [
                        {
                            "name": "probabilities",
                            "datatype": "FP32",
                            "shape": [1, 4],
                            "data": [EXAMPLE_PROBABILITIES[c] for c in _CLASSES],
                        },
                        {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["Sports"]},
                        {"name": "empty", "datatype": "BOOL", "shape": [1], "data": [False]},
                    ],
                }
            ]
        },
    )

    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class InferenceErrorResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"error": "unknown model 'resnet'"}]})

    error: str
