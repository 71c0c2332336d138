"""Client deadlines and disconnected clients: no model work for requests nobody waits for.

The batcher is driven deterministically: a gated predictor holds a batch in the model thread
until the test releases it, so "queued", "running" and "expired" are states the test sets up,
not timing it hopes for. The live-server versions (real sockets, 100 requests) are in test_live.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.errors import InvalidHeader
from service.http.endpoint import request_timeout
from service.inference.batching import Batcher, ClientDisconnected, DeadlineExceeded
from service.inference.predictor import Prediction, Predictor
from service.observability.metrics import Metrics
from tests.service.conftest import make_settings


class GatedPredictor:
    """A real Predictor whose batches wait for :attr:`release`; records every text it computes."""

    def __init__(self, inner: Predictor) -> None:
        self.inner = inner
        self.release = threading.Event()
        self.running = threading.Event()
        self.computed: list[str] = []

    def predict(self, texts: Sequence[str]) -> Prediction:
        self.computed.extend(texts)
        self.running.set()
        assert self.release.wait(10), "test never released the batch"
        return self.inner.predict(texts)


@pytest.fixture(scope="module")
def predictor(artifacts_dir: Path) -> Predictor:
    return Predictor.load(artifacts_dir, device="cpu")


def dropped(metrics: Metrics, reason: str) -> float:
    return metrics.dropped.labels(reason)._value.get()


async def started(gate: GatedPredictor) -> None:
    while not gate.running.is_set():
        await asyncio.sleep(0.001)


def test_deadline_while_queued_is_answered_at_once_and_never_computed(predictor: Predictor) -> None:
    gate = GatedPredictor(predictor)
    metrics = Metrics()

    async def main() -> tuple[list[BaseException | Prediction], float]:
        batcher = Batcher(lambda: gate, max_batch_size=4, max_wait_ms=0, max_queue_size=1024, metrics=metrics)
        batcher.start()
        busy = asyncio.create_task(batcher.submit(["busy batch"]))
        await started(gate)  # the model thread is now held: everything else queues
        t0 = time.monotonic()
        late = [asyncio.create_task(batcher.submit([f"late {i}"], timeout=0.02)) for i in range(10)]
        results = await asyncio.wait_for(asyncio.gather(*late, return_exceptions=True), 5)
        waited = time.monotonic() - t0
        assert batcher.queued_texts == 0  # expired requests left the queue at once
        gate.release.set()
        await busy
        await asyncio.sleep(0.05)  # the consumer goes back to the (now empty) queue
        assert batcher.queued_texts == 0  # and never counts the expired requests twice
        await batcher.stop()
        return results, waited

    results, waited = asyncio.run(main())
    assert all(isinstance(r, DeadlineExceeded) and not r.computed for r in results), results
    assert waited < 1.0  # answered at the deadline, not after the busy batch (which never ends unreleased)
    assert gate.computed == ["busy batch"]
    assert dropped(metrics, "deadline") == 10


def test_deadline_during_forward_pass_answers_without_waiting_for_it(predictor: Predictor) -> None:
    gate = GatedPredictor(predictor)
    metrics = Metrics()

    async def main() -> BaseException:
        batcher = Batcher(lambda: gate, max_batch_size=4, max_wait_ms=0, max_queue_size=1024, metrics=metrics)
        batcher.start()
        task = asyncio.create_task(batcher.submit(["slow one"], timeout=0.05))
        with pytest.raises(DeadlineExceeded) as info:
            await asyncio.wait_for(task, 5)  # the batch is still held in the model thread
        gate.release.set()
        await batcher.stop()
        return info.value

    error = asyncio.run(main())
    assert isinstance(error, DeadlineExceeded) and error.computed
    assert dropped(metrics, "deadline") == 0  # it was computed: a timeout, not a drop


def test_disconnected_client_is_dropped_before_its_batch(predictor: Predictor) -> None:
    gate = GatedPredictor(predictor)
    metrics = Metrics()

    async def main() -> tuple[BaseException | Prediction, Prediction]:
        batcher = Batcher(lambda: gate, max_batch_size=4, max_wait_ms=0, max_queue_size=1024, metrics=metrics)
        batcher.start()
        busy = asyncio.create_task(batcher.submit(["busy batch"]))
        await started(gate)
        gone = asyncio.create_task(batcher.submit(["nobody waits for me"], gone=lambda: True))
        stays = asyncio.create_task(batcher.submit(["still here"], gone=lambda: False))
        await asyncio.sleep(0.01)
        gate.release.set()
        await busy
        results = await asyncio.wait_for(asyncio.gather(gone, stays, return_exceptions=True), 5)
        await batcher.stop()
        return results[0], results[1]  # type: ignore[return-value]

    gone, stays = asyncio.run(main())
    assert isinstance(gone, ClientDisconnected)
    assert isinstance(stays, Prediction) and len(stays.probabilities) == 1
    assert gate.computed == ["busy batch", "still here"]
    assert dropped(metrics, "disconnected") == 1


def test_a_client_gone_while_its_batch_waits_on_the_model_thread_is_dropped(predictor: Predictor) -> None:
    gate = GatedPredictor(predictor)
    metrics = Metrics()
    left = threading.Event()

    async def main() -> BaseException | Prediction:
        batcher = Batcher(lambda: gate, max_batch_size=1, max_wait_ms=0, max_queue_size=1024, metrics=metrics)
        batcher.start()
        busy = asyncio.create_task(batcher.submit(["busy batch"]))
        await started(gate)
        # A full batch: handed to the model thread at once, behind the busy one.
        waiting = asyncio.create_task(batcher.submit(["leaves while waiting"], gone=left.is_set))
        await asyncio.sleep(0.01)
        left.set()  # the client goes while its batch waits on the model thread
        gate.release.set()
        await busy
        result = (await asyncio.wait_for(asyncio.gather(waiting, return_exceptions=True), 5))[0]
        await batcher.stop()
        return result

    result = asyncio.run(main())
    assert isinstance(result, ClientDisconnected), result
    assert gate.computed == ["busy batch"]
    assert dropped(metrics, "disconnected") == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, 10.0),
        ("250", 0.25),
        (" 250 ", 0.25),
        ("1", 0.001),
        ("0" * 30 + "7", 0.007),
        ("999999", 10.0),
        ("9" * 5000, 10.0),
    ],
)
def test_timeout_header_is_capped_by_the_server(value: str | None, expected: float) -> None:
    assert request_timeout(None if value is None else value.encode(), 10.0) == pytest.approx(expected)


@pytest.mark.parametrize("value", ["0", "000", "-5", "+5", "1.5", "abc", "", "1e3", "٣", "1 000"])
def test_bad_timeout_header_is_400_with_reason(value: str, client: TestClient) -> None:
    with pytest.raises(InvalidHeader):
        request_timeout(None if value is None else value.encode(), 10.0)
    for body in ({"text": "Stocks rally"}, {"texts": ["Stocks rally", "Oil"]}):
        r = client.post("/predict", json=body, headers={"X-Request-Timeout-Ms": value.encode()})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["type"] == "invalid_header"
        assert "X-Request-Timeout-Ms" in error["message"] and "positive integer" in error["message"]


def test_good_timeout_header_is_served(client: TestClient) -> None:
    r = client.post("/predict", json={"text": "Stocks rally"}, headers={"X-Request-Timeout-Ms": "5000"})
    assert r.status_code == 200, r.text


def test_expired_while_queued_is_504_with_retry_after(artifacts_dir: Path, predictor: Predictor) -> None:
    """Over HTTP (in-process): the model thread is held, so a 5 ms deadline expires in the queue."""
    with TestClient(create_app(make_settings(artifacts_dir, max_wait_ms=0))) as c:
        state = c.app.model  # type: ignore[attr-defined]
        gate = GatedPredictor(predictor)
        state.batcher._get_predictor = lambda: gate
        holder = threading.Thread(target=lambda: c.post("/predict", json={"text": "hold the model"}))
        holder.start()
        assert gate.running.wait(5)
        r = c.post("/predict", json={"text": "too late"}, headers={"X-Request-Timeout-Ms": "5"})
        gate.release.set()
        holder.join()
        assert r.status_code == 504, r.text
        assert r.headers["retry-after"] == "1"
        error = r.json()["error"]
        assert error["type"] == "timeout" and "not computed" in error["message"]
        assert gate.computed == ["hold the model"]
        assert 'hc_dropped_requests_total{reason="deadline"} 1.0' in c.get("/metrics").text


def test_openapi_documents_the_deadline_header_and_its_errors(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/predict"]["post"]
    [header] = [p for p in operation["parameters"] if p["name"] == "X-Request-Timeout-Ms"]
    assert header["in"] == "header" and not header["required"]
    assert header["schema"] == {"type": "integer", "minimum": 1}
    assert {"400", "504"} <= set(operation["responses"])
