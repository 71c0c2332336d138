"""The Open Inference Protocol's REST answers as JSON Schemas, written from its specification
(the KServe open-inference-protocol REST document: server and model metadata, inference
response, error object), and a checker that holds any V2 answer to the one its route gives.

Health and ready routes answer with a status and no body the protocol defines; every other
V2 answer is JSON: the route's object on 200, ``{"error": string}`` otherwise.
"""

from __future__ import annotations

from typing import Any

import httpx
import jsonschema_rs

_TENSOR_DATA: dict[str, Any] = {
    "type": "array",
    "items": {"anyOf": [{"$ref": "#/$defs/tensor_data"}, {"type": ["number", "string", "boolean"]}]},
}
_DEFS: dict[str, Any] = {
    "tensor_data": _TENSOR_DATA,
    "parameters": {"type": "object"},
    "metadata_tensor": {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "parameters": {"$ref": "#/$defs/parameters"},
        },
    },
    "response_output": {
        "type": "object",
        "required": ["name", "shape", "datatype", "data"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "datatype": {"type": "string"},
            "parameters": {"$ref": "#/$defs/parameters"},
            "data": {"$ref": "#/$defs/tensor_data"},
        },
    },
}


def _schema(body: dict[str, Any]) -> Any:
    return jsonschema_rs.validator_for(
        {"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": _DEFS, **body}
    )


SERVER_METADATA = _schema(
    {
        "type": "object",
        "required": ["name", "version", "extensions"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
    }
)
MODEL_METADATA = _schema(
    {
        "type": "object",
        "required": ["name", "platform"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": {"$ref": "#/$defs/metadata_tensor"}},
            "outputs": {"type": "array", "items": {"$ref": "#/$defs/metadata_tensor"}},
        },
    }
)
INFERENCE_RESPONSE = _schema(
    {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": {"$ref": "#/$defs/parameters"},
            "outputs": {"type": "array", "items": {"$ref": "#/$defs/response_output"}},
        },
    }
)
ERROR = _schema(
    {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
        "additionalProperties": False,
    }
)


def schema_for(method: str, path: str) -> Any | None:
    """The schema of a 200 answer on ``path`` (None: the status is the whole answer)."""
    parts = path.rstrip("/").split("/")
    if parts == ["", "v2"]:
        return SERVER_METADATA
    if parts[-1] in ("live", "ready"):
        return None
    if parts[-1] == "infer" and method == "POST":
        return INFERENCE_RESPONSE
    return MODEL_METADATA


checked: list[tuple[str, str, int]] = []  # every answer checked, for the test that counts them


def check_answer(method: str, path: str, status: int, body: bytes) -> None:
    """Raise AssertionError when a V2 answer does not have its route's shape."""
    if not path.startswith("/v2"):
        return
    checked.append((method, path, status))
    if method == "HEAD":
        return
    schema = schema_for(method, path) if status == 200 else ERROR
    if schema is None:
        assert body == b"", f"{method} {path} -> {status} has a body: {body[:200]!r}"
        return
    if status != 200 and not body and schema_for(method, path) is None:
        return  # a health or ready route answering "not ready" with its status alone
    try:
        document = httpx.Response(status, content=body).json()
    except ValueError as exc:
        raise AssertionError(f"{method} {path} -> {status}: not JSON: {body[:200]!r}") from exc
    errors = [e.message for e in schema.iter_errors(document)]
    assert not errors, f"{method} {path} -> {status}: {errors[:3]} in {body[:300]!r}"


def check_response(response: httpx.Response) -> None:
    """An httpx response hook: every V2 answer a test client receives is checked."""
    response.read()
    check_answer(response.request.method, response.request.url.path, response.status_code, response.content)
