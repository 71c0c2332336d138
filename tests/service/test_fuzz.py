"""Property tests: no body, however odd, gets a 5xx; every accepted text gets a distribution."""

from __future__ import annotations

import json
import math

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.service.conftest import CATEGORIES

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
