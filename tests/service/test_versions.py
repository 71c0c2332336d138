"""Several versions live: routing by name, the canary split, the shadow, separate batches, and
adding or retiring a version while serving."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.inference.model_service import ModelService, compare_answers
from service.inference.predictor import Prediction
from service.inference.versions import canary_bucket
from service.observability.metrics import Metrics
from tests.service.conftest import distinct_texts, make_artifact, make_settings

A, B, C = "20260101T000000Z-aaaaaa", "20260102T000000Z-bbbbbb", "20260103T000000Z-cccccc"
AUTH = {"Authorization": "Bearer s3cret"}


@pytest.fixture(scope="module")
def three_versions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("artifacts-versions")
    for seed, version in enumerate((A, B, C)):
        make_artifact(root, seed=seed, version=version)
    return root


@pytest.fixture
def two(three_versions: Path) -> Iterator[TestClient]:
    """A served by default, B beside it, admin on."""
    settings = make_settings(three_versions, version=A, versions=B, admin_token="s3cret")
    with TestClient(create_app(settings)) as client:
        yield client


def counter(client: TestClient, line_start: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_request_picks_its_version_by_header_or_path(two: TestClient) -> None:
    body = {"text": "Stocks rally"}
    assert two.post("/predict", json=body).json()["model_version"] == A
    by_header = two.post("/predict", json=body, headers={"X-Model-Version": B}).json()
    assert by_header["model_version"] == B
    v2 = two.post(
        f"/v2/models/headline-classifier/versions/{B}/infer",
        json={"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["Stocks rally"]}]},
    ).json()
    assert v2["model_version"] == B
    probabilities = [
        by_header["predictions"][0]["probabilities"][c] for c in sorted(by_header["predictions"][0]["probabilities"])
    ]
    assert v2["outputs"][0]["data"] == probabilities
    unknown = two.post("/predict", json=body, headers={"X-Model-Version": C})
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "unknown_model"
    assert A in unknown.json()["error"]["message"] and B in unknown.json()["error"]["message"]
    assert counter(two, f'hc_model_answers_total{{version="{B}"}}') == 2


def test_model_info_and_v2_metadata_list_the_versions(two: TestClient) -> None:
    info = two.get("/model").json()
    assert info["version"] == A and info["versions"] == [A, B]
    assert info["routing"] == {"default": A, "canary": None, "shadow": None}
    meta = two.get(f"/v2/models/headline-classifier/versions/{B}").json()
    assert meta["versions"] == [A, B] and meta["parameters"] == {"version": B, "default_version": A}
    assert two.get(f"/v2/models/headline-classifier/versions/{B}/ready").status_code == 200


def test_batches_never_mix_versions(two: TestClient) -> None:
    """Concurrent requests for both versions: every batch a predictor ran holds only its own texts."""
    model: ModelService = two.app.model  # type: ignore[attr-defined]
    assert model.table is not None
    seen: dict[str, list[list[str]]] = {A: [], B: []}
    for version, lane in model.table.lanes.items():
        original = lane.predictor.predict

        def recording(texts, *, observe=True, _original=original, _version=version):  # type: ignore[no-untyped-def]
            seen[_version].append(list(texts))
            return _original(texts, observe=observe)

        lane.predictor.predict = recording  # type: ignore[method-assign]
    texts = distinct_texts(64)
    mine = {A: set(texts[:32]), B: set(texts[32:])}

    def ask(i: int) -> str:
        version = A if i < 32 else B
        r = two.post("/predict", json={"text": texts[i]}, headers={"X-Model-Version": version})
        return r.json()["model_version"]

    with ThreadPoolExecutor(16) as pool:
        answered = list(pool.map(ask, range(64)))
    assert answered == [A] * 32 + [B] * 32
    for version, batches in seen.items():
        assert batches and all(set(batch) <= mine[version] for batch in batches), (version, batches)


def test_canary_share_is_stable_per_request_id(three_versions: Path) -> None:
    settings = make_settings(three_versions, version=A, canary=f"{B}:30")
    with TestClient(create_app(settings)) as client:
        assert client.get("/model").json()["routing"]["canary"] == {"version": B, "percent": 30.0}
        routed = {}
        for i in range(200):
            rid = f"client-{i}"
            routed[rid] = client.post("/predict", json={"text": "Stocks rally"}, headers={"X-Request-ID": rid}).json()[
                "model_version"
            ]
        share = sum(v == B for v in routed.values()) / len(routed)
        assert 0.2 <= share <= 0.4, share
        for rid, version in list(routed.items())[:20]:  # a retry lands where the first try did
            again = client.post("/predict", json={"text": "Oil"}, headers={"X-Request-ID": rid}).json()
            assert again["model_version"] == version
            expected = B if canary_bucket(rid) < 3000 else A
            assert version == expected
        named = client.post(
            "/predict", json={"text": "Oil"}, headers={"X-Model-Version": A, "X-Request-ID": "client-0"}
        )
        assert named.json()["model_version"] == A  # a named version overrides the split


def test_canary_buckets_spread_evenly() -> None:
    buckets = [canary_bucket(f"id-{i}") for i in range(20000)]
    assert all(0 <= b < 10000 for b in buckets)
    assert abs(sum(b < 1000 for b in buckets) / len(buckets) - 0.10) < 0.01


def test_shadow_scores_a_copy_after_the_answer_and_never_delays_it(three_versions: Path) -> None:
    settings = make_settings(three_versions, version=A, shadow=B)
    with TestClient(create_app(settings)) as client:
        model: ModelService = client.app.model  # type: ignore[attr-defined]
        assert model.table is not None and model.table.shadow is not None
        assert client.get("/model").json()["routing"]["shadow"] == B
        gate = threading.Event()
        shadow = model.table.shadow.predictor
        original = shadow.predict

        def held(texts, *, observe=True):  # type: ignore[no-untyped-def]
            gate.wait(10)
            return original(texts, observe=observe)

        shadow.predict = held  # type: ignore[method-assign]
        texts = distinct_texts(5)
        r = client.post("/predict", json={"texts": texts})
        assert r.status_code == 200 and r.json()["model_version"] == A  # answered while the shadow is held
        assert model.shadow_backlog() == 1  # its copy is still waiting or being scored
        assert counter(client, 'hc_shadow_texts_total{outcome="agree"}') == 0
        gate.set()
        for _ in range(100):
            scored = sum(counter(client, f'hc_shadow_texts_total{{outcome="{o}"}}') for o in ("agree", "disagree"))
            if scored:
                break
            threading.Event().wait(0.05)
        assert scored == len(texts)
        assert counter(client, "hc_shadow_top_probability_abs_difference_count") == len(texts)
        assert counter(client, 'hc_model_answers_total{version="' + B + '"}') == 0  # shadows are not answers


def test_shadow_copies_wait_for_an_idle_model_and_are_skipped_past_the_buffer(three_versions: Path) -> None:
    """While a live batch runs and another waits, copies are held, not scored; a copy past the
    buffer (max_batch_size texts) is skipped and counted; once the model is idle they are scored
    as one batch."""

    async def scenario() -> tuple[float, float, float, float]:
        metrics = Metrics()
        settings = make_settings(three_versions, version=A, shadow=B, model_process=False, max_batch_size=2)
        model = ModelService(settings, metrics)
        await model.start()
        assert model.table is not None
        release = threading.Event()
        blocker = asyncio.ensure_future(model._on_model_thread(release.wait, 10))
        first = asyncio.ensure_future(model.predict(["Stocks rally"], 10))
        await asyncio.sleep(0.05)  # its batch is formed and handed to the model thread
        second = asyncio.ensure_future(model.predict(["Oil"], 10))
        await asyncio.sleep(0.05)  # queued: the model is not idle
        assert model.table.default.batcher.queued_texts == 1
        classes = ["Business", "Sci/Tech", "Sports", "World"]
        fake = Prediction(np.full((1, 4), 0.25, dtype=np.float32), [False], A, classes)
        for text in ("a b", "c d", "e f"):  # the third does not fit the buffer of 2 texts
            model.shadow([text], fake)
        await asyncio.sleep(0.3)  # past the shadow's interval: still held, the model is busy
        assert model.table.shadow is not None and model.table.shadow.batcher.idle  # nothing handed to it yet
        scored_while_busy = metrics.shadow_agreement.labels("agree")._value.get()
        scored_while_busy += metrics.shadow_agreement.labels("disagree")._value.get()
        skipped = metrics.shadow_skipped.labels("busy")._value.get()
        release.set()
        await asyncio.gather(blocker, first, second)
        for _ in range(100):
            await asyncio.sleep(0.02)
            if not model.shadow_backlog():
                break
        scored = metrics.shadow_agreement.labels("agree")._value.get()
        scored += metrics.shadow_agreement.labels("disagree")._value.get()
        batches = metrics.batch_texts._sum.get()  # every batch's texts: 1 + 1 live, 2 shadow
        await model.stop()
        return scored_while_busy, skipped, scored, batches

    scored_while_busy, skipped, scored, batches = asyncio.run(scenario())
    assert (scored_while_busy, skipped, scored) == (0, 1, 2)
    assert batches == 4


def test_compare_answers_matches_classes_by_name() -> None:
    served = Prediction(np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], np.float32), [False] * 2, A, ["x", "y", "z"])
    shadow = Prediction(np.array([[0.1, 0.5, 0.4], [0.1, 0.3, 0.6]], np.float32), [False] * 2, B, ["z", "x", "y"])
    agree, differences = compare_answers(served, shadow)
    assert agree == 1  # x and x agree; z and y do not
    assert differences == pytest.approx([0.7 - 0.5, 0.6 - 0.1])


def test_reload_adds_and_retires_versions(two: TestClient) -> None:
    r = two.post("/admin/reload", headers=AUTH, json={"version": C, "action": "add"})
    assert r.status_code == 200, r.text
    assert r.json() == {"previous_version": A, "model_version": A, "versions": [A, B, C]}
    assert two.post("/predict", json={"text": "Oil"}, headers={"X-Model-Version": C}).json()["model_version"] == C
    assert two.get("/v2/models/headline-classifier").json()["versions"] == [A, B, C]
    again = two.post("/admin/reload", headers=AUTH, json={"version": C, "action": "add"})
    assert again.status_code == 409 and "already served" in again.json()["error"]["message"]
    default = two.post("/admin/reload", headers=AUTH, json={"version": A, "action": "retire"})
    assert default.status_code == 409 and "default" in default.json()["error"]["message"]
    r = two.post("/admin/reload", headers=AUTH, json={"version": C, "action": "retire"})
    assert r.status_code == 200 and r.json()["versions"] == [A, B]
    gone = two.post("/predict", json={"text": "Oil"}, headers={"X-Model-Version": C})
    assert gone.status_code == 404
    missing = two.post("/admin/reload", headers=AUTH, json={"version": C, "action": "retire"})
    assert missing.status_code == 404
    assert two.post("/admin/reload", headers=AUTH, json={"version": B, "action": "drop"}).status_code == 422
    # A replace of the default by a version served beside it is refused: two lanes would serve it.
    clash = two.post("/admin/reload", headers=AUTH, json={"version": B})
    assert clash.status_code == 409 and "retire it first" in clash.json()["error"]["message"]
    assert two.get("/model").json()["versions"] == [A, B]
