"""Every endpoint and every kind of bad input, through the real app over HTTP (in-process)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from contract.artifact import load_artifact, resolve_version
from contract.model import pad_batch, predict_proba
from service.api.app import create_app
from tests.service.conftest import CATEGORIES, TOKEN_TEXTS, make_artifact, make_settings
from tests.tolerance import SERVED_ATOL, SERVED_DEVICE


def check_error(response, status: int | tuple[int, ...], error_type: str | None = None) -> dict:
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"type", "message", "details"}
    assert body["error"]["message"]
    if error_type:
        assert body["error"]["type"] == error_type
    return body["error"]


def test_predict_single_text(client: TestClient) -> None:
    r = client.post("/predict", json={"text": "Federer wins the final"})
    assert r.status_code == 200
    body = r.json()
    assert body["model_version"] == "20260101T000000Z-000001"
    [pred] = body["predictions"]
    probs = pred["probabilities"]
    assert set(probs) == set(CATEGORIES)
    values = list(probs.values())
    assert values == sorted(values, reverse=True)
    assert pred["label"] == next(iter(probs))
    assert math.isclose(sum(values), 1.0, abs_tol=1e-5)
    assert pred["empty"] is False


def test_predict_many_in_order_with_empty_flag(client: TestClient) -> None:
    r = client.post("/predict", json={"texts": TOKEN_TEXTS})
    assert r.status_code == 200
    preds = r.json()["predictions"]
    assert len(preds) == len(TOKEN_TEXTS)
    assert [p["empty"] for p in preds] == [t == "the of and" for t in TOKEN_TEXTS]
    for text, pred in zip(TOKEN_TEXTS, preds, strict=True):
        alone = client.post("/predict", json={"text": text}).json()["predictions"][0]
        assert alone["label"] == pred["label"]
        for c in CATEGORIES:
            assert math.isclose(alone["probabilities"][c], pred["probabilities"][c], abs_tol=SERVED_ATOL)


def test_output_equals_training_predict_proba(client: TestClient, artifacts_dir: Path) -> None:
    artifact = load_artifact(resolve_version(artifacts_dir))
    encoder = artifact.text_encoder()
    ids, lengths = pad_batch(encoder.encode_many(TOKEN_TEXTS))
    expected = predict_proba(artifact.model, ids, lengths).numpy()
    preds = client.post("/predict", json={"texts": TOKEN_TEXTS}).json()["predictions"]
    got = np.array([[p["probabilities"][c] for c in artifact.labels.classes] for p in preds])
    np.testing.assert_allclose(got, expected, rtol=0, atol=SERVED_ATOL)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"text": ""}, "empty"),
        ({"text": "   \n\t"}, "empty"),
        ({"texts": ["ok", " "]}, "texts[1]"),
        ({"texts": []}, "empty list"),
        ({"text": 12}, "string"),
        ({"text": None}, "null"),
        ({"text": None, "texts": ["a"]}, "null"),
        ({"texts": "not a list"}, "list"),
        ({"texts": ["ok", 3]}, "string"),
        ({}, "exactly one"),
        ({"text": "a", "texts": ["b"]}, "exactly one"),
        ({"text": "a", "extra": 1}, "extra"),
        ([{"text": "a"}], "dictionary"),
        ("just a string", "dictionary"),
        ({"text": "x" * 501}, "too long"),
        ({"texts": ["x"] * 17}, "too many"),
    ],
)
def test_invalid_requests_are_422(client: TestClient, body: object, fragment: str) -> None:
    error = check_error(client.post("/predict", json=body), 422, "invalid_request")
    assert fragment.lower() in error["message"].lower()


@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (b'{"text": "abc', {"content-type": "application/json"}),  # truncated
        (b"not json at all", {"content-type": "application/json"}),
        (b'{"text": "\xff\xfe bad utf-8"}', {"content-type": "application/json"}),
        (b"\xc3\x28", {"content-type": "application/json"}),
    ],
)
def test_malformed_bodies_are_400(client: TestClient, content: bytes, headers: dict[str, str]) -> None:
    check_error(client.post("/predict", content=content, headers=headers), 400, "malformed_body")


@pytest.mark.parametrize(
    ("content", "headers"),
    [(b"", {"content-type": "application/json"}), (b"text=hello", {"content-type": "text/plain"}), (b"{}", {})],
)
def test_missing_or_non_json_body_is_4xx(client: TestClient, content: bytes, headers: dict[str, str]) -> None:
    check_error(client.post("/predict", content=content, headers=headers), (400, 415, 422))


@pytest.mark.parametrize(
    "headers",
    [
        {"content-type": "application/x-www-form-urlencoded"},  # what `curl -d` sends by default
        {"content-type": "text/plain; charset=utf-8"},
        {},
    ],
)
def test_json_body_is_read_whatever_the_content_type(client: TestClient, headers: dict[str, str]) -> None:
    response = client.post("/predict", content=b'{"text": "Stocks rally as oil prices fall"}', headers=headers)
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 1
    bad = client.post("/predict", content=b"text=hello", headers=headers)
    check_error(bad, 400, "malformed_body")


def test_unknown_route_and_method(client: TestClient) -> None:
    check_error(client.get("/nope"), 404, "not_found")
    check_error(client.get("/predict"), 405, "method_not_allowed")


def test_health_model_and_docs(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "alive"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    info = client.get("/model").json()
    assert info["version"] == "20260101T000000Z-000001"
    assert info["categories"] == CATEGORIES
    assert info["metrics"] == {"test": {"accuracy": 0.25, "macro_f1": 0.2}}
    assert info["model_config"]["rnn_type"] == "bigru"
    assert info["preprocessing"]["remove_stopwords"] is True
    assert info["created_at"]
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert schema["components"]["schemas"]["PredictRequest"]["examples"]
    assert schema["components"]["schemas"]["PredictResponse"]["examples"]
    request = schema["components"]["schemas"]["PredictRequest"]
    assert request["oneOf"] == [{"required": ["text"]}, {"required": ["texts"]}]
    assert request["properties"]["text"]["maxLength"] == 500  # this app's max_text_chars
    assert request["properties"]["texts"]["maxItems"] == 16
    predict_responses = schema["paths"]["/predict"]["post"]["responses"]
    assert predict_responses["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }


def test_request_id_echoed_or_generated(client: TestClient) -> None:
    r = client.post("/predict", json={"text": "Oil"}, headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    generated = client.get("/health/live").headers["x-request-id"]
    assert len(generated) == 32
    assert client.get("/nope", headers={"X-Request-ID": "e1"}).headers["x-request-id"] == "e1"


def test_metrics_exposition(client: TestClient) -> None:
    client.post("/predict", json={"text": "Oil"})
    client.post("/predict", json={"text": ""})
    text = client.get("/metrics").text
    assert 'hc_http_requests_total{method="POST",route="/predict",status="200"}' in text
    assert 'hc_http_requests_total{method="POST",route="/predict",status="422"}' in text
    for name in (
        "hc_http_request_duration_seconds_bucket",
        "hc_batch_queue_wait_seconds_bucket",
        "hc_batch_compute_seconds_bucket",
        "hc_batch_size_texts_bucket",
        "hc_queue_depth_texts",
        f'hc_model_info{{device="{SERVED_DEVICE}",version="20260101T000000Z-000001"}} 1.0',
    ):
        assert name in text
    # Observed, not only declared: the answered request is in each histogram.
    for observed in (
        'hc_http_request_duration_seconds_count{route="/predict"}',
        "hc_batch_queue_wait_seconds_count",
        "hc_batch_compute_seconds_count",
        "hc_batch_size_texts_count",
    ):
        count = next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(observed + " "))
        assert count >= 1, observed


def test_served_probabilities_apply_the_artifacts_temperature(tmp_path: Path) -> None:
    """A calibrated artifact is served calibrated: softmax(logits / T), not softmax(logits)."""
    make_artifact(tmp_path, seed=3, version="20260101T000000Z-0000aa", temperature=3.0)
    artifact = load_artifact(resolve_version(tmp_path))
    ids, lengths = pad_batch(artifact.text_encoder().encode_many(TOKEN_TEXTS))
    with torch.inference_mode():
        logits = artifact.model(ids, lengths)
    calibrated = torch.softmax(logits / 3.0, dim=-1).numpy()
    raw = torch.softmax(logits, dim=-1).numpy()
    with TestClient(create_app(make_settings(tmp_path))) as c:
        preds = c.post("/predict", json={"texts": TOKEN_TEXTS}).json()["predictions"]
    got = np.array([[p["probabilities"][cls] for cls in artifact.labels.classes] for p in preds])
    np.testing.assert_allclose(got, calibrated, atol=SERVED_ATOL)
    assert np.abs(got - raw).max() > 10 * SERVED_ATOL  # the two differ enough to tell apart


def test_admin_disabled_without_token(client: TestClient) -> None:
    check_error(client.post("/admin/reload", headers={"Authorization": "Bearer x"}), 404, "not_found")


@pytest.fixture()
def reload_env(tmp_path: Path) -> tuple[TestClient, Path]:
    make_artifact(tmp_path, seed=0, version="20260101T000000Z-aaaaaa")
    settings = make_settings(tmp_path, admin_token="s3cret")
    with TestClient(create_app(settings)) as c:
        yield c, tmp_path


def test_reload_auth(reload_env: tuple[TestClient, Path]) -> None:
    client, _ = reload_env
    check_error(client.post("/admin/reload"), 401, "unauthorized")
    check_error(client.post("/admin/reload", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
    check_error(client.post("/admin/reload", headers={"Authorization": "s3cret"}), 401)


def test_reload_swaps_model(reload_env: tuple[TestClient, Path]) -> None:
    client, root = reload_env
    auth = {"Authorization": "Bearer s3cret"}
    before = client.post("/predict", json={"text": "Stocks rally"}).json()
    make_artifact(root, seed=7, version="20260102T000000Z-bbbbbb")
    r = client.post("/admin/reload", headers=auth)
    assert r.status_code == 200, r.text
    assert r.json() == {"previous_version": "20260101T000000Z-aaaaaa", "model_version": "20260102T000000Z-bbbbbb"}
    after = client.post("/predict", json={"text": "Stocks rally"}).json()
    assert after["model_version"] == "20260102T000000Z-bbbbbb"
    assert after["predictions"][0]["probabilities"] != before["predictions"][0]["probabilities"]
    assert client.get("/model").json()["version"] == "20260102T000000Z-bbbbbb"
    # An explicit older version can be loaded back.
    r = client.post("/admin/reload", headers=auth, json={"version": "20260101T000000Z-aaaaaa"})
    assert r.status_code == 200 and r.json()["model_version"] == "20260101T000000Z-aaaaaa"
    check_error(client.post("/admin/reload", headers=auth, json={"version": 3}), 422)


def test_failed_reload_keeps_old_model(reload_env: tuple[TestClient, Path]) -> None:
    client, root = reload_env
    auth = {"Authorization": "Bearer s3cret"}
    error = check_error(client.post("/admin/reload", headers=auth, json={"version": "nope"}), 409, "reload_failed")
    assert "nope" in error["message"]
    # A tampered newer version: checksum mismatch is reported, old model keeps serving.
    broken = make_artifact(root, seed=3, version="20260103T000000Z-cccccc")
    (broken / "vocab.json").write_text('{"tokens": ["<PAD>", "<UNK>", "x"]}\n')
    error = check_error(client.post("/admin/reload", headers=auth, json={"version": broken.name}), 409, "reload_failed")
    assert "checksum" in error["message"]
    shutil.rmtree(broken)
    r = client.post("/predict", json={"text": "Stocks rally"})
    assert r.status_code == 200 and r.json()["model_version"] == "20260101T000000Z-aaaaaa"
    assert 'hc_model_reloads_total{outcome="failed"} 2.0' in client.get("/metrics").text


def test_request_timeout_is_504(artifacts_dir: Path) -> None:
    with TestClient(create_app(make_settings(artifacts_dir, request_timeout_s=1e-6))) as c:
        error = check_error(c.post("/predict", json={"texts": TOKEN_TEXTS * 4}), 504, "timeout")
        assert "within" in error["message"]
        assert c.get("/health/live").status_code == 200


def test_oversized_body_is_413(artifacts_dir: Path) -> None:
    settings = make_settings(artifacts_dir, max_texts_per_request=2, max_text_chars=10)
    with TestClient(create_app(settings)) as c:
        big = b'{"texts": ["' + b"x" * 200_000 + b'"]}'
        check_error(c.post("/predict", content=big, headers={"content-type": "application/json"}), 413)

        def chunks():
            yield b'{"texts": ["'
            for _ in range(50):
                yield b"y" * 4096
            yield b'"]}'

        r = c.post("/predict", content=chunks(), headers={"content-type": "application/json"})
        check_error(r, 413, "payload_too_large")
        ok = c.post("/predict", json={"texts": ["short", "also short"]})
        assert ok.status_code == 200
