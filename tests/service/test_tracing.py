"""OpenTelemetry spans, read back from the SDK's in-memory exporter: the caller's trace kept,
queue spans under their request, one batch span linked to every request it served, the trace
id in the access log; and the standard variables that switch it on."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind  # noqa: E402

from service.api.app import create_app  # noqa: E402
from service.observability.tracing import Tracing, TracingError, tracing_from_env  # noqa: E402
from tests.service.conftest import distinct_texts, make_settings  # noqa: E402

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


@pytest.fixture
def traced(artifacts_dir: Path) -> Iterator[tuple[TestClient, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = make_settings(artifacts_dir, access_log=True, max_wait_ms=50.0)
    with TestClient(create_app(settings, tracing=Tracing(provider))) as client:
        yield client, exporter


def test_the_callers_trace_is_continued_and_the_queue_span_is_a_child_of_the_request(
    traced: tuple[TestClient, InMemorySpanExporter], caplog: pytest.LogCaptureFixture
) -> None:
    client, exporter = traced
    with caplog.at_level(logging.INFO, logger="service.access"):
        r = client.post("/predict", json={"texts": ["Stocks rally", "Oil"]}, headers={"traceparent": TRACEPARENT})
    assert r.status_code == 200
    spans = exporter.get_finished_spans()
    [request] = [s for s in spans if s.name == "POST /predict"]
    assert request.kind == SpanKind.SERVER
    assert f"{request.context.trace_id:032x}" == CALLER_TRACE
    assert request.parent is not None and f"{request.parent.span_id:016x}" == CALLER_SPAN
    attributes = dict(request.attributes or {})
    assert attributes["http.route"] == "/predict" and attributes["http.response.status_code"] == 200
    assert attributes["hc.model.version"] == r.json()["model_version"] and attributes["hc.texts"] == 2
    assert attributes["hc.request_id"] == r.headers["x-request-id"]
    [queue] = [s for s in spans if s.name == "queue"]
    assert queue.context.trace_id == request.context.trace_id
    assert queue.parent is not None and queue.parent.span_id == request.context.span_id
    assert request.start_time <= queue.start_time <= queue.end_time <= request.end_time
    [access] = [rec for rec in caplog.records if rec.name == "service.access"]
    assert access.trace_id == CALLER_TRACE  # type: ignore[attr-defined]


def test_one_batch_span_is_linked_to_every_request_it_served(traced: tuple[TestClient, InMemorySpanExporter]) -> None:
    client, exporter = traced
    texts = distinct_texts(16)
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda t: client.post("/predict", json={"text": t}).status_code, texts))
    assert statuses == [200] * 16
    spans = exporter.get_finished_spans()
    requests = {s.context.span_id: s for s in spans if s.name == "POST /predict"}
    batches = [s for s in spans if s.name == "batch"]
    assert len(requests) == 16 and batches
    linked = [link.context.span_id for batch in batches for link in batch.links]
    assert sorted(linked) == sorted(requests)  # every request in exactly one batch
    assert any(len(batch.links) > 1 for batch in batches), "no batch served several requests"
    for batch in batches:
        attributes = dict(batch.attributes or {})
        assert attributes["hc.batch.requests"] == len(batch.links) == attributes["hc.batch.texts"]
        assert attributes["hc.batch.compute_ms"] >= 0 and attributes["hc.model.device"] == "cpu"
        for link in batch.links:  # each link points into its request's own trace
            assert link.context.trace_id == requests[link.context.span_id].context.trace_id


def test_v2_requests_and_errors_are_traced_too(traced: tuple[TestClient, InMemorySpanExporter]) -> None:
    client, exporter = traced
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["Oil"]}]}
    assert client.post("/v2/models/headline-classifier/infer", json=body).status_code == 200
    assert client.post("/predict", content=b"{").status_code == 400
    names = {
        (s.name, dict(s.attributes or {})["http.response.status_code"])
        for s in exporter.get_finished_spans()
        if s.kind == SpanKind.SERVER
    }
    assert ("POST /v2/models/{name}/infer", 200) in names and ("POST /predict", 400) in names


def test_tracing_is_off_unless_the_standard_variable_names_an_exporter() -> None:
    assert tracing_from_env({}) is None
    assert tracing_from_env({"OTEL_TRACES_EXPORTER": "none"}) is None
    with pytest.raises(TracingError, match="unknown exporter 'jaeger'"):
        tracing_from_env({"OTEL_TRACES_EXPORTER": "jaeger"})
    assert isinstance(tracing_from_env({"OTEL_TRACES_EXPORTER": "console"}), Tracing)
    assert isinstance(tracing_from_env({"OTEL_TRACES_EXPORTER": "otlp"}), Tracing)


def test_without_tracing_no_span_work_is_done(artifacts_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    with TestClient(create_app(make_settings(artifacts_dir))) as client:
        assert client.app.tracing is None  # type: ignore[attr-defined]
        assert client.app.model.batcher.on_batch is None  # type: ignore[attr-defined]
        assert client.post("/predict", json={"text": "Oil"}, headers={"traceparent": TRACEPARENT}).status_code == 200
