"""Drift signals: live counters on /metrics against the reference stored with the model."""

from __future__ import annotations

import random
import string
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from contract.artifact import load_artifact, resolve_version
from contract.drift import CONFIDENCE_BUCKETS, confidence_histogram, count_inputs
from service.api.app import create_app
from tests.service.conftest import CATEGORIES, TOKEN_TEXTS, make_settings

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "monitoring" / "drift-alerts.yml"


def scrape(client: TestClient) -> dict[str, float]:
    """Every sample as ``name{label="v",...}`` (labels sorted) -> value."""
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


def gibberish(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = lambda k: " ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(7, 12))) for _ in range(k))  # noqa: E731
    return [words(rng.randint(3, 10)) for _ in range(n)]


def post_all(client: TestClient, texts: list[str], per_request: int = 50) -> list[dict]:
    predictions = []
    for i in range(0, len(texts), per_request):
        r = client.post("/predict", json={"texts": texts[i : i + per_request]})
        assert r.status_code == 200, r.text
        predictions += r.json()["predictions"]
    return predictions


def oov_rate(after: dict[str, float], before: dict[str, float]) -> float:
    oov = after["hc_input_oov_tokens_total"] - before["hc_input_oov_tokens_total"]
    tokens = after["hc_input_tokens_total"] - before["hc_input_tokens_total"]
    return oov / tokens


@pytest.fixture(scope="module")
def news_client(news_artifact: tuple[Path, list[str]]) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(news_artifact[0]))) as c:
        yield c


def test_gibberish_burst_drives_live_oov_rate_to_one_while_headlines_stay_at_reference(
    news_client: TestClient, news_artifact: tuple[Path, list[str]]
) -> None:
    held_out = news_artifact[1]
    reference = news_client.get("/model").json()["reference"]
    assert 0.05 < reference["oov_token_rate"] < 0.2  # the test split of the 10K sample: ~0.1

    start = scrape(news_client)
    post_all(news_client, held_out[:1000])
    after_news = scrape(news_client)
    assert oov_rate(after_news, start) == pytest.approx(reference["oov_token_rate"], abs=0.02)

    post_all(news_client, gibberish(300))
    after_burst = scrape(news_client)
    assert oov_rate(after_burst, after_news) > 0.99
    # The reference is the served model's and does not move with traffic.
    assert after_burst["hc_reference_oov_token_rate"] == reference["oov_token_rate"]
    assert news_client.get("/model").json()["reference"] == reference

    post_all(news_client, held_out[1000:])
    assert oov_rate(scrape(news_client), after_burst) == pytest.approx(reference["oov_token_rate"], abs=0.03)


def test_live_counters_equal_the_shared_definitions(
    news_client: TestClient, news_artifact: tuple[Path, list[str]]
) -> None:
    texts = [*news_artifact[1][:200], *TOKEN_TEXTS, "(Reuters)", "!!! ???", *gibberish(20, seed=1)]
    artifact = load_artifact(resolve_version(news_artifact[0]))
    expected = count_inputs((artifact.text_encoder().normalizer.tokens(t) for t in texts), artifact.vocab.stoi)
    assert expected.empty >= 2 and 0 < expected.oov_tokens < expected.tokens

    before = scrape(news_client)
    predictions = post_all(news_client, texts, per_request=17)
    after = scrape(news_client)
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    assert delta["hc_input_texts_total"] == expected.texts
    assert delta["hc_input_tokens_total"] == expected.tokens
    assert delta["hc_input_oov_tokens_total"] == expected.oov_tokens
    assert delta["hc_empty_inputs_total"] == expected.empty == sum(p["empty"] for p in predictions)
    for label in CATEGORIES:
        assert delta[f'hc_predictions_total{{label="{label}"}}'] == sum(p["label"] == label for p in predictions)
    confidences = [max(p["probabilities"].values()) for p in predictions]
    cumulative = np.cumsum(confidence_histogram(confidences))
    for edge, count in zip(CONFIDENCE_BUCKETS, cumulative, strict=True):
        assert delta[f'hc_prediction_confidence_bucket{{le="{edge}"}}'] == count
    assert delta['hc_prediction_confidence_bucket{le="+Inf"}'] == len(texts)
    assert delta["hc_prediction_confidence_sum"] == pytest.approx(sum(confidences), rel=1e-6)


def test_reference_gauges_match_the_artifact(news_client: TestClient) -> None:
    reference = news_client.get("/model").json()["reference"]
    samples = scrape(news_client)
    assert samples["hc_reference_empty_rate"] == reference["empty_rate"]
    for label, share in reference["predicted_label_distribution"].items():
        assert samples[f'hc_reference_prediction_ratio{{label="{label}"}}'] == pytest.approx(share)
    shares = np.cumsum(reference["confidence_histogram"])
    for edge, share in zip(CONFIDENCE_BUCKETS, shares, strict=True):
        assert samples[f'hc_reference_confidence_ratio{{le="{edge}"}}'] == pytest.approx(share)
    assert samples['hc_reference_confidence_ratio{le="1.0"}'] == pytest.approx(1.0)


def test_model_without_reference_says_so(client: TestClient) -> None:
    body = client.get("/model").json()
    assert body["reference"] is None
    assert "no drift reference" in body["reference_note"]
    assert "reference" not in body["metrics"]
    samples = scrape(client)
    assert not [k for k in samples if k.startswith("hc_reference_")]
    assert "hc_input_oov_tokens_total" in samples  # live counters work without a reference


def test_counting_can_be_switched_off_and_warmup_is_not_counted(artifacts_dir: Path) -> None:
    with TestClient(create_app(make_settings(artifacts_dir, drift_metrics=False))) as c:
        assert c.post("/predict", json={"texts": TOKEN_TEXTS}).status_code == 200
        assert scrape(c)["hc_input_texts_total"] == 0
    with TestClient(create_app(make_settings(artifacts_dir, warmup=True))) as c:
        while c.get("/health/ready").status_code != 200:
            time.sleep(0.05)
        assert scrape(c)["hc_input_texts_total"] == 0
        c.post("/predict", json={"text": "Oil prices climb"})
        assert scrape(c)["hc_input_texts_total"] == 1


def test_alert_rules_parse_and_use_only_exported_metrics(news_client: TestClient) -> None:
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert {a["alert"] for a in alerts} >= {"HeadlineInputOOVDrift", "HeadlineConfidenceShift"}
    exported = {name.split("{")[0] for name in scrape(news_client)}
    for alert in alerts:
        assert alert["expr"] and alert["for"] and alert["annotations"]["summary"]
        used = {tok for tok in _identifiers(alert["expr"]) if tok.startswith("hc_")}
        assert used and used <= exported, used - exported


def _identifiers(expr: str) -> set[str]:
    import re

    return set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
