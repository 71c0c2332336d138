"""The one /predict parser: the answers it gives, and agreement with the published schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.http.predict_body import PredictBodyParser
from tests.service.predict_body_cases import corpus, fingerprint, key

ANSWERS = json.loads((Path(__file__).parent / "data" / "predict_answers.json").read_text())
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
PARSER = PredictBodyParser(max_texts=16, max_chars=500)  # the `client` fixture's limits


def test_every_recorded_body_gets_its_recorded_answer(client: TestClient) -> None:
    """Statuses, messages and details of ~400 bodies (edge cases, screened large bodies, seeded
    random JSON), recorded from the design with four sets of body rules, over HTTP."""
    bodies = corpus()
    assert {key(raw) for raw in bodies} == set(ANSWERS), "the corpus changed: re-record the answers"
    wrong = []
    for raw in bodies:
        r = client.post("/predict", content=raw, headers={"content-type": "application/json"})
        got = fingerprint(r.status_code, r.json())
        if got != ANSWERS[key(raw)]:
            wrong.append((raw[:80], ANSWERS[key(raw)], got, r.text[:300]))
    assert not wrong, f"{len(wrong)} answers changed, e.g. {wrong[:3]}"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
odd_text = st.text(alphabet=st.sampled_from(["a", " ", "\x1f", "\ufeff", "\x85", "\u3000", "é", "\t"]), max_size=4)
bodies = (
    json_values
    | st.fixed_dictionaries({"text": json_values | odd_text})
    | st.fixed_dictionaries({"texts": json_values})
    | st.fixed_dictionaries({"texts": st.lists(odd_text, max_size=18)})
    | st.fixed_dictionaries({"text": st.text(min_size=495, max_size=505)})
    | st.fixed_dictionaries({"text": odd_text, "texts": st.lists(odd_text, max_size=2)})
    | st.fixed_dictionaries({"texts": st.lists(st.text(max_size=60), max_size=20)})
)


@pytest.fixture(scope="module")
def published(client: TestClient) -> jsonschema_rs.Validator:
    """The PredictRequest schema as /openapi.json publishes it, with this server's limits."""
    return jsonschema_rs.validator_for(client.get("/openapi.json").json()["components"]["schemas"]["PredictRequest"])


@FUZZ
@given(body=bodies)
def test_the_parser_and_the_published_schema_accept_and_refuse_the_same_bodies(
    published: jsonschema_rs.Validator, body: object
) -> None:
    accepted = not isinstance(PARSER.parse(json.dumps(body).encode()), Exception)
    assert accepted == published.is_valid(body), body


@FUZZ
@given(body=bodies)
def test_the_fast_decode_accepts_a_subset_with_the_same_texts(body: object) -> None:
    raw = json.dumps(body).encode()
    fast = PARSER.well_formed(raw)
    if fast is not None:
        assert PARSER._validate(raw) == fast


@pytest.mark.parametrize(
    "raw",
    [
        b'{"text": "Stocks rally"}',
        b'{"texts": ["Stocks rally", "Oil falls"]}',
        b'{"text":"a","text":"Stocks rally"}',  # duplicate keys: the last wins in both
        '{"text": "caf\u00e9 \u3000 news"}'.encode(),
    ],
)
def test_well_formed_bodies_take_the_fast_decode(raw: bytes) -> None:
    assert PARSER.well_formed(raw) == PARSER._validate(raw) == PARSER.parse(raw)
    assert PARSER.well_formed(raw) is not None


@pytest.mark.parametrize("char", ["\x1f", "\x1c", "\x85", "\ufeff", "\u3000", "\u2028", "\t", " ", "a", "\u200b"])
def test_schema_pattern_and_parser_agree_on_blank_text(client: TestClient, char: str) -> None:
    """One whitespace rule: the OpenAPI pattern (checked by a JSON-schema validator) and the API agree."""
    schema = client.get("/openapi.json").json()["components"]["schemas"]["PredictRequest"]
    body = {"text": char * 3}
    schema_valid = jsonschema_rs.validator_for(schema).is_valid(body)
    status = client.post("/predict", json=body).status_code
    assert status in (200, 422)
    assert schema_valid == (status == 200), (repr(char), schema_valid, status)


def test_a_body_nested_past_the_recursion_limit_is_a_400(client: TestClient) -> None:
    r = client.post("/predict", content=b"[" * 100_000, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "malformed_body", r.text
