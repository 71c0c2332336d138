"""A real ``python -m service`` (uvicorn) subprocess and real concurrent HTTP clients."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.inference.predictor import Predictor
from tests.service.conftest import distinct_texts, make_artifact
from tests.service.live_server import LiveServer, launch_server, start_server
from tests.tolerance import SERVED_ATOL

LONG = "Intel unveils a faster chip for laptops while NASA probe sends images of Mars craters " * 3


def metric(text: str, name: str, default: float | None = None) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    if match is None and default is not None:
        return default
    assert match, name
    return float(match.group(1))


@pytest.fixture(scope="module")
def server(artifacts_dir: Path) -> Iterator[LiveServer]:
    with launch_server(artifacts_dir, "--max-wait-ms", "5", "--torch-threads", "1") as s:
        yield s


async def hammer(url: str, bodies: list[dict], concurrency: int) -> list[httpx.Response]:
    """Send ``bodies`` from ``concurrency`` clients at once; responses in body order."""
    results: list[httpx.Response | None] = [None] * len(bodies)
    next_index = iter(range(len(bodies)))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def worker() -> None:
            for i in next_index:
                results[i] = await client.post("/predict", json=bodies[i])

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results  # type: ignore[return-value]


def test_concurrent_clients_are_batched_and_get_their_own_answers(server: LiveServer, artifacts_dir: Path) -> None:
    texts = distinct_texts(256)  # 256 different token sequences: a swapped answer shows
    responses = asyncio.run(hammer(server.url, [{"text": t} for t in texts], concurrency=32))
    assert [r.status_code for r in responses] == [200] * len(texts)
    predictor = Predictor.load(artifacts_dir, device="cpu")
    singles = [predictor.predict([t]).probabilities[0] for t in texts]  # each text alone
    assert len({tuple(np.round(p, 5)) for p in singles}) == len(texts)
    for text, expected, r in zip(texts, singles, responses, strict=True):
        probs = r.json()["predictions"][0]["probabilities"]
        got = [probs[c] for c in predictor.classes]
        np.testing.assert_allclose(got, expected, atol=SERVED_ATOL, err_msg=text)
    text = httpx.get(f"{server.url}/metrics").text
    batches = metric(text, "hc_batch_size_requests_count")
    requests = metric(text, "hc_batch_size_requests_sum")
    assert requests >= 256
    assert requests / batches > 1.2, f"{requests} requests in {batches} batches: no batching observed"


def test_access_log_is_json_with_request_id(server: LiveServer) -> None:
    httpx.post(f"{server.url}/predict", json={"text": "Oil"}, headers={"X-Request-ID": "log-me-42"})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in server.log().splitlines() if "log-me-42" in line]
        if lines:
            break
        time.sleep(0.05)
    [entry] = lines
    assert entry["method"] == "POST" and entry["path"] == "/predict" and entry["status"] == 200
    assert entry["latency_ms"] > 0


def test_overload_gives_503_with_retry_after(big_artifacts_dir: Path) -> None:
    args = ("--max-batch-size", "1", "--max-queue-size", "16", "--max-texts-per-request", "16")
    args += ("--torch-threads", "1", "--no-warmup")
    with launch_server(big_artifacts_dir, *args) as s:
        bodies = [{"texts": [LONG] * 8} for _ in range(48)]
        responses = asyncio.run(hammer(s.url, bodies, concurrency=48))
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 503}, codes
        assert codes.count(503) > 0 and codes.count(200) > 0, codes
        rejected = next(r for r in responses if r.status_code == 503)
        assert rejected.headers["retry-after"] == "1"
        assert rejected.json()["error"]["type"] == "overloaded"
        text = httpx.get(f"{s.url}/metrics").text
        assert 'hc_rejected_requests_total{reason="overloaded"}' in text
        assert httpx.get(f"{s.url}/health/live").status_code == 200


def test_sigterm_drains_in_flight_requests_and_exits_0(big_artifacts_dir: Path) -> None:
    s = start_server(big_artifacts_dir, "--max-batch-size", "1", "--torch-threads", "1", "--no-warmup")
    try:
        bodies = [{"texts": [LONG] * 64} for _ in range(8)]

        async def scenario() -> tuple[list[object], list[int | str]]:
            load = asyncio.create_task(asyncio.to_thread(lambda: asyncio.run(hammer(s.url, bodies, 8))))
            # Wait until all 8 requests are inside the server (queued or running), then SIGTERM.
            async with httpx.AsyncClient(base_url=s.url) as probe:
                deadline = time.monotonic() + 20
                most = 0.0  # the gauge's highest reading: it must have counted requests inside
                while time.monotonic() < deadline:
                    text = (await probe.get("/metrics")).text
                    most = max(most, metric(text, 'hc_http_requests_in_flight{route="/predict"}', 0))
                    if most >= 8:
                        break
                    await asyncio.sleep(0.02)
                print("in flight at most:", most)
                assert most >= 1, "the in-flight gauge never counted a request inside the server"
                s.process.send_signal(signal.SIGTERM)
                after: list[int | str] = []
                for _ in range(5):
                    try:
                        after.append((await probe.get("/health/ready")).status_code)
                    except httpx.TransportError as exc:
                        after.append(type(exc).__name__)
                    await asyncio.sleep(0.05)
            return await load, after

        responses, after = asyncio.run(scenario())
        assert [r.status_code for r in responses] == [200] * 8  # type: ignore[attr-defined]
        print("readiness after SIGTERM:", after)
        assert 200 not in after, after  # readiness is 503 (or the socket is closed) once draining
        assert s.process.wait(30) == 0, s.log()
        assert "batcher drained" in s.log()
    finally:
        if s.process.poll() is None:
            s.process.kill()


MAX_TEXT = ("Intel unveils a faster chip for laptops while NASA probe sends images of Mars craters " * 12)[:1000]


async def keep_busy(url: str, stop: asyncio.Event, clients: int = 6, texts: int = 64) -> int:
    """Keep the model busy with long 64-text requests until ``stop``; returns how many were answered (all 200)."""
    answered = 0
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def worker() -> None:
            nonlocal answered
            while not stop.is_set():
                r = await client.post("/predict", json={"texts": [MAX_TEXT] * texts})
                assert r.status_code == 200, r.text
                answered += 1

        await asyncio.gather(*(worker() for _ in range(clients)))
    return answered


async def wait_for_backlog(url: str, texts: int) -> None:
    async with httpx.AsyncClient(base_url=url) as probe:
        for _ in range(500):
            if metric((await probe.get("/metrics")).text, "hc_queue_depth_texts") >= texts:
                return
            await asyncio.sleep(0.01)
    raise AssertionError("the queue never filled")


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # CPU with one thread and a wide recurrent layer: each 64-text batch must take far longer
    # than the test's client needs to send the next one, so a queue builds up and stays (the
    # shipped model's batches are fast enough that one Python client cannot keep it busy).
    root = tmp_path_factory.mktemp("artifacts-slow")
    make_artifact(root, seed=1, version="20260101T000000Z-000003", size="default", hidden_dim=256)
    args = ("--max-batch-size", "64", "--torch-threads", "1", "--no-warmup", "--max-wait-ms", "0", "--device", "cpu")
    with launch_server(root, *args) as s:
        yield s


def test_expired_deadlines_under_load_are_504_and_never_computed(busy_server: LiveServer) -> None:
    url = busy_server.url
    before = httpx.get(f"{url}/metrics").text

    async def scenario() -> tuple[int, list[httpx.Response]]:
        stop = asyncio.Event()
        load = asyncio.create_task(keep_busy(url, stop))
        await wait_for_backlog(url, 3 * 64)
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
            headers = {"X-Request-Timeout-Ms": "1"}
            late = await asyncio.gather(
                *(client.post("/predict", json={"text": f"deadline {i}"}, headers=headers) for i in range(100))
            )
        stop.set()
        return await load, late

    answered, late = asyncio.run(scenario())
    assert [r.status_code for r in late] == [504] * 100
    reached_model = [r.text for r in late if "not computed" not in r.json()["error"]["message"]]
    assert all(r.headers.get("retry-after") == "1" for r in late) and not reached_model, reached_model
    after = httpx.get(f"{url}/metrics").text
    # Every text the model computed belongs to the background load: none of the 100 got in.
    computed = metric(after, "hc_batch_size_texts_sum") - metric(before, "hc_batch_size_texts_sum", 0)
    assert computed == answered * 64, (computed, answered)
    dropped = metric(after, 'hc_dropped_requests_total{reason="deadline"}')
    assert dropped - metric(before, 'hc_dropped_requests_total{reason="deadline"}') == 100


def test_client_that_disconnects_while_queued_is_never_computed(busy_server: LiveServer) -> None:
    url = busy_server.url
    before = httpx.get(f"{url}/metrics").text
    body = json.dumps({"text": "I will not wait for this"}).encode()
    request = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    async def scenario() -> int:
        stop = asyncio.Event()
        load = asyncio.create_task(keep_busy(url, stop))
        await wait_for_backlog(url, 3 * 64)
        writers = []
        for _ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", busy_server.port)
            writer.write(request)
            await writer.drain()
            writers.append(writer)
        # Once the server holds all five (in flight beyond what the 6 load clients can account for), hang up.
        async with httpx.AsyncClient(base_url=url) as probe:
            for _ in range(500):
                text = (await probe.get("/metrics")).text
                if metric(text, 'hc_http_requests_in_flight{route="/predict"}') >= 6 + 5:
                    break
                await asyncio.sleep(0.005)
            else:
                raise AssertionError("the server never held the five raw requests")
        for writer in writers:
            writer.close()
        await asyncio.sleep(0.3)
        stop.set()
        return await load

    answered = asyncio.run(scenario())
    after = httpx.get(f"{url}/metrics").text
    computed = metric(after, "hc_batch_size_texts_sum") - metric(before, "hc_batch_size_texts_sum", 0)
    assert computed == answered * 64, (computed, answered)
    dropped = metric(after, 'hc_dropped_requests_total{reason="disconnected"}')
    assert dropped - metric(before, 'hc_dropped_requests_total{reason="disconnected"}') == 5
