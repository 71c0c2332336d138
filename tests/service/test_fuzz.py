"""Property tests: no body, however odd, gets a 5xx; every accepted text gets a distribution."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.api.routes import checked_texts
from service.api.schemas import PredictRequest
from service.errors import ServiceError
from service.http.endpoint import PredictPath
from service.inference.model_service import ServiceState
from service.observability.metrics import Metrics
from tests.service.conftest import CATEGORIES, make_settings

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
bodies = (
    json_values
    | st.fixed_dictionaries({"text": json_values})
    | st.fixed_dictionaries({"texts": json_values})
    | st.fixed_dictionaries({"texts": st.lists(st.text(max_size=60), max_size=20)})
)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(body=bodies)
def test_any_json_body_is_answered_without_5xx(client: TestClient, body: object) -> None:
    r = client.post("/predict", content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code in (200, 422), r.text
    if r.status_code == 422:
        assert r.json()["error"]["type"] == "invalid_request"


@FUZZ
@given(raw=st.binary(max_size=80))
def test_any_bytes_are_answered_without_5xx(client: TestClient, raw: bytes) -> None:
    r = client.post("/predict", content=raw, headers={"content-type": "application/json"})
    assert 200 <= r.status_code < 500, r.text


@FUZZ
@given(text=st.text(min_size=1, max_size=300).filter(str.strip))
def test_any_text_gets_a_distribution(client: TestClient, text: str) -> None:
    r = client.post("/predict", json={"text": text})
    assert r.status_code == 200, r.text
    [pred] = r.json()["predictions"]
    assert list(pred["probabilities"]) and set(pred["probabilities"]) == set(CATEGORIES)
    assert math.isclose(sum(pred["probabilities"].values()), 1.0, abs_tol=1e-5)


# -- the lean /predict path answers only what the FastAPI route would accept, identically ---------


@pytest.fixture(scope="module")
def lean(artifacts_dir: Path) -> PredictPath:
    settings = make_settings(artifacts_dir, max_texts_per_request=16, max_text_chars=500)

    async def unused(*_: object) -> int:
        raise AssertionError

    return PredictPath(ServiceState(settings=settings, metrics=Metrics()), unused)


def route_texts(raw: bytes) -> list[str] | None:
    """What the FastAPI route would accept: json.loads, the pydantic model, the runtime limits."""
    try:
        body = PredictRequest.model_validate(json.loads(raw))
        return checked_texts(body, 16, 500)
    except (ValueError, ServiceError):  # JSONDecodeError, UnicodeDecodeError and ValidationError are ValueErrors
        return None


odd_text = st.text(alphabet=st.sampled_from(["a", " ", "\x1f", "\ufeff", "\x85", "\u3000", "\ud800", "é"]), max_size=4)


@FUZZ
@given(
    body=bodies
    | st.fixed_dictionaries({"text": odd_text})
    | st.fixed_dictionaries({"texts": st.lists(odd_text, max_size=18)})
    | st.fixed_dictionaries({"text": st.text(min_size=495, max_size=505)})
)
def test_lean_path_accepts_a_subset_of_the_route_with_the_same_texts(lean: PredictPath, body: object) -> None:
    raw = json.dumps(body).encode()
    accepted = lean.accepted_texts(raw)
    if accepted is not None:
        assert route_texts(raw) == accepted


@pytest.mark.parametrize(
    "raw",
    [
        b'{"text": "Stocks rally"}',
        b'{"texts": ["Stocks rally", "Oil falls"]}',
        b'{"text":"a","text":"Stocks rally"}',  # duplicate keys: the last wins in both
        '{"text": "caf\u00e9 \u3000 news"}'.encode(),
    ],
)
def test_lean_path_takes_well_formed_requests(lean: PredictPath, raw: bytes) -> None:
    assert lean.accepted_texts(raw) == route_texts(raw) is not None


@pytest.mark.parametrize("char", ["\x1f", "\x1c", "\x85", "\ufeff", "\u3000", "\u2028", "\t", " ", "a", "\u200b"])
def test_schema_pattern_and_validator_agree_on_blank_text(client: TestClient, char: str) -> None:
    """One whitespace rule: the OpenAPI pattern (checked by a JSON-schema validator) and the API agree."""
    schema = client.get("/openapi.json").json()["components"]["schemas"]["PredictRequest"]
    body = {"text": char * 3}
    schema_valid = jsonschema_rs.validator_for(schema).is_valid(body)
    status = client.post("/predict", json=body).status_code
    assert status in (200, 422)
    assert schema_valid == (status == 200), (repr(char), schema_valid, status)
