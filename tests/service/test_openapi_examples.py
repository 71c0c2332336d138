"""The OpenAPI examples are real answers: each is checked against the committed default model's response."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from contract.artifact import resolve_version
from service.api.app import create_app
from tests.service.conftest import make_settings
from tests.service.live_server import ROOT
from tests.tolerance import SERVED_DEVICE

DEFAULT_ARTIFACTS = ROOT / "artifacts"
FREE_FORM = {"metrics"}  # whatever the artifact's metrics.json holds: the example shows a part
# Null in the committed default model's answer (trained before training wrote a drift reference);
# the example shows the filled-in form, and the reference's own shape is tested in tests/service/test_drift.py.
NULL_IN_DEFAULT_MODEL = {"reference", "reference_note"}
NULL_IN_DEFAULT_MODEL |= {"canary", "shadow"}  # null when one version is served (the example shows that)


def assert_same_shape(example: Any, real: Any, where: str = "", partial: bool = False) -> None:
    """Same keys at every level (a part of them inside free-form ones), same JSON types, lists item by item."""
    if isinstance(example, dict):
        assert isinstance(real, dict), f"{where}: example is an object, real answer is {real!r}"
        partial = partial or where.rsplit(".", 1)[-1] in FREE_FORM
        if partial:
            assert set(example) <= set(real), f"{where}: example keys {sorted(set(example) - set(real))} never sent"
        else:
            # FastAPI drops null values from examples, so a nullable key may be absent from one.
            expected = set(real) - (NULL_IN_DEFAULT_MODEL - set(example))
            assert set(example) == expected, f"{where}: example keys {sorted(example)} vs real {sorted(real)}"
        for key in example:
            if real[key] is None and key in NULL_IN_DEFAULT_MODEL:
                continue
            assert_same_shape(example[key], real[key], f"{where}.{key}", partial)
    elif isinstance(example, list):
        assert isinstance(real, list) and real, f"{where}: example is a list, real answer is {real!r}"
        for item in example:
            assert_same_shape(item, real[0], f"{where}[]", partial)
    elif isinstance(example, bool) or example is None:
        assert type(real) is type(example), f"{where}: {example!r} vs real {real!r}"
    elif isinstance(example, int | float):
        assert isinstance(real, int | float) and not isinstance(real, bool), f"{where}: {example!r} vs {real!r}"
    else:
        assert isinstance(real, str), f"{where}: {example!r} vs real {real!r}"


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[TestClient, dict[str, Any]]]:
    settings = make_settings(DEFAULT_ARTIFACTS, admin_token="examples")
    with TestClient(create_app(settings)) as client:
        schemas = client.get("/openapi.json").json()["components"]["schemas"]
        yield client, schemas


def example(schemas: dict[str, Any], name: str) -> dict[str, Any]:
    [first, *_] = schemas[name]["examples"]
    return first


def test_predict_examples_are_real_answers(served: tuple[TestClient, dict[str, Any]]) -> None:
    client, schemas = served
    responses = [client.post("/predict", json=body) for body in schemas["PredictRequest"]["examples"]]
    assert [r.status_code for r in responses] == [200] * len(responses)
    answer = example(schemas, "PredictResponse")
    real = responses[0].json()  # the response example answers the first request example
    assert_same_shape(answer, real)
    assert answer["model_version"] == resolve_version(DEFAULT_ARTIFACTS).name
    [shown], [got] = answer["predictions"], real["predictions"]
    assert shown["label"] == got["label"] and shown["empty"] == got["empty"]
    for category, p in shown["probabilities"].items():
        assert math.isclose(p, got["probabilities"][category], abs_tol=1e-4), (category, p, got)


def test_model_info_example_is_a_real_answer(served: tuple[TestClient, dict[str, Any]]) -> None:
    client, schemas = served
    shown, real = example(schemas, "ModelInfo"), client.get("/model").json()
    assert_same_shape(shown, real)
    for key in ("version", "created_at", "categories", "model_config", "preprocessing"):
        assert shown[key] == real[key], key
    assert real["device"] == SERVED_DEVICE and shown["device"] in ("cpu", "cuda")
    assert real["reference"] is not None or real["reference_note"], "a missing reference must be explained"
    assert shown["metrics"]["best_epoch"] == real["metrics"]["best_epoch"]
    for name, value in shown["metrics"]["test"]["overall"].items():
        assert math.isclose(value, real["metrics"]["test"]["overall"][name], abs_tol=1e-4), name


def test_health_reload_and_error_examples_are_real_answers(served: tuple[TestClient, dict[str, Any]]) -> None:
    client, schemas = served
    assert example(schemas, "HealthResponse") == client.get("/health/ready").json()
    auth = {"Authorization": "Bearer examples"}
    body_schema = client.get("/openapi.json").json()["paths"]["/admin/reload"]["post"]["requestBody"]
    [request_example, *_] = body_schema["content"]["application/json"]["schema"]["examples"]  # inline
    reload = client.post("/admin/reload", headers=auth, json=request_example)
    assert reload.status_code == 200, reload.text
    assert_same_shape(example(schemas, "ReloadResponse"), reload.json())
    assert example(schemas, "ReloadResponse")["model_version"] == reload.json()["model_version"]
    # The error example is the answer to a blank text, word for word.
    assert example(schemas, "ErrorResponse") == client.post("/predict", json={"text": "   "}).json()


def test_shape_check_catches_a_stale_example() -> None:
    real = {"error": {"type": "x", "message": "m", "details": [{"loc": ["body"], "msg": "m", "type": "t"}]}}
    stale = {"error": {"type": "x", "message": "m", "details": [{"loc": ["body"], "msg": "m"}]}}
    with pytest.raises(AssertionError, match="example keys"):
        assert_same_shape(stale, real)


@pytest.mark.parametrize("texts", [["!!!"], ["?", "..."], ["!!!", "Oil prices fall"]])
def test_the_default_model_answers_texts_that_preprocess_to_nothing(
    served: tuple[TestClient, dict[str, Any]], texts: list[str]
) -> None:
    """A lone text or a whole batch with no words left (the character n-gram model included): 200, flagged empty."""
    client, _ = served
    r = client.post("/predict", json={"texts": texts})
    assert r.status_code == 200, r.text
    assert [p["empty"] for p in r.json()["predictions"]] == [t != "Oil prices fall" for t in texts]
