"""The dynamic batcher with a real (tiny) model behind a slow, recording wrapper."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from service.batching import Batcher, Overloaded
from service.predictor import _GROUP_PAD_FACTOR, _GROUP_PAD_SLACK, Prediction, Predictor, available_cpus, length_groups


class SlowPredictor:
    """Delegates to a real Predictor; sleeps per batch, records batch contents, fails on 'boom'."""

    def __init__(self, inner: Predictor, delay: float = 0.05) -> None:
        self.inner = inner
        self.delay = delay
        self.batches: list[list[str]] = []

    def predict(self, texts: Sequence[str]) -> Prediction:
        self.batches.append(list(texts))
        time.sleep(self.delay)
        if any("boom" in t for t in texts):
            raise RuntimeError("boom in batch")
        return self.inner.predict(texts)


@pytest.fixture(scope="module")
def predictor(artifacts_dir: Path) -> Predictor:
    return Predictor.load(artifacts_dir, device="cpu")


def make_batcher(slow: SlowPredictor, **kw: float) -> Batcher:
    opts = {"max_batch_size": 64, "max_wait_ms": 5.0, "max_queue_size": 1024} | kw
    return Batcher(lambda: slow, **opts)  # type: ignore[arg-type, return-value]


def test_concurrent_requests_are_batched_and_answered_in_order(predictor: Predictor) -> None:
    slow = SlowPredictor(predictor)
    texts = [f"headline number {i} about oil and stocks " + "word " * (i % 7) for i in range(20)]

    async def main() -> list[Prediction]:
        batcher = make_batcher(slow)
        batcher.start()
        first = asyncio.create_task(batcher.submit([texts[0]]))
        await asyncio.sleep(0.01)  # the first batch is now running in the worker thread
        rest = [asyncio.create_task(batcher.submit([t, t + " again"])) for t in texts[1:]]
        results = await asyncio.gather(first, *rest)
        await batcher.stop()
        return results

    results = asyncio.run(main())
    assert [len(b) for b in slow.batches] == [1, 38]  # everything that queued meanwhile ran as one batch
    expected = predictor.predict([texts[0]] + [x for t in texts[1:] for x in (t, t + " again")])
    got = np.concatenate([r.probabilities for r in results])
    np.testing.assert_allclose(got, expected.probabilities, atol=1e-6)
    assert all(r.version == predictor.version for r in results)
    assert [len(r.probabilities) for r in results] == [1] + [2] * 19


def test_idle_request_runs_without_waiting(predictor: Predictor) -> None:
    slow = SlowPredictor(predictor, delay=0.0)

    async def main() -> float:
        batcher = make_batcher(slow, max_wait_ms=500.0)
        batcher.start()
        await batcher.submit(["warm"])
        started = time.monotonic()
        await batcher.submit(["Oil prices"])
        elapsed = time.monotonic() - started
        await batcher.stop()
        return elapsed

    assert asyncio.run(main()) < 0.25  # far below max_wait_ms: no fixed wait when idle


def test_announced_requests_are_waited_for_until_the_deadline(predictor: Predictor) -> None:
    slow = SlowPredictor(predictor, delay=0.0)

    async def main() -> tuple[float, float]:
        batcher = make_batcher(slow, max_wait_ms=100.0)
        batcher.start()
        # One request announced and arriving soon: the batch waits for it and takes both.
        batcher.announce()
        first = asyncio.create_task(batcher.submit(["first"]))

        async def late() -> Prediction:
            await asyncio.sleep(0.02)
            batcher.withdraw()
            return await batcher.submit(["second"])

        await asyncio.gather(first, late())
        # An announcement that never turns into a request delays a batch by at most max_wait_ms.
        batcher.announce()
        started = time.monotonic()
        await batcher.submit(["alone"])
        waited = time.monotonic() - started
        batcher.withdraw()
        await batcher.stop()
        return waited, 0.1

    waited, max_wait = asyncio.run(main())
    assert slow.batches[0] == ["first", "second"]
    assert 0.05 < waited < max_wait + 0.5


def test_failing_batch_fails_only_its_callers(predictor: Predictor) -> None:
    slow = SlowPredictor(predictor)

    async def main() -> list[object]:
        batcher = make_batcher(slow)
        batcher.start()
        a = asyncio.create_task(batcher.submit(["fine a"]))
        await asyncio.sleep(0.01)
        b = asyncio.create_task(batcher.submit(["boom"]))
        c = asyncio.create_task(batcher.submit(["unlucky neighbour"]))
        results = await asyncio.gather(a, b, c, return_exceptions=True)
        d = await batcher.submit(["fine d"])  # the batcher keeps running
        await batcher.stop()
        return [*results, d]

    a, b, c, d = asyncio.run(main())
    assert isinstance(a, Prediction) and isinstance(d, Prediction)
    assert isinstance(b, RuntimeError) and isinstance(c, RuntimeError)
    assert slow.batches == [["fine a"], ["boom", "unlucky neighbour"], ["fine d"]]


def test_queue_bound_raises_overloaded(predictor: Predictor) -> None:
    slow = SlowPredictor(predictor, delay=0.1)

    async def main() -> list[object]:
        batcher = make_batcher(slow, max_queue_size=4)
        batcher.start()
        running = asyncio.create_task(batcher.submit(["in flight"]))
        await asyncio.sleep(0.02)
        queued = asyncio.create_task(batcher.submit(["q1", "q2", "q3"]))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="queue full"):
            await batcher.submit(["q4", "q5"])
        fits = asyncio.create_task(batcher.submit(["q4"]))
        results = await asyncio.gather(running, queued, fits)
        await batcher.stop()
        return results

    assert [len(r.probabilities) for r in asyncio.run(main())] == [1, 3, 1]


def test_timeout_and_batching_disabled(predictor: Predictor) -> None:
    slow = SlowPredictor(predictor, delay=0.05)

    async def main() -> None:
        batcher = make_batcher(slow, max_batch_size=1)
        batcher.start()
        first = asyncio.create_task(batcher.submit(["slow one"]))
        await asyncio.sleep(0.01)
        with pytest.raises(TimeoutError):
            await batcher.submit(["gives up"], timeout=0.02)
        others = await asyncio.gather(*(batcher.submit([f"t{i}"]) for i in range(4)))
        await first
        assert len(others) == 4
        await batcher.stop()

    asyncio.run(main())
    assert all(len(b) == 1 for b in slow.batches)
    assert ["gives up"] not in slow.batches  # timed out before its turn: skipped, never computed


def test_stop_answers_queued_requests_then_refuses(predictor: Predictor) -> None:
    slow = SlowPredictor(predictor, delay=0.05)

    async def main() -> None:
        batcher = make_batcher(slow, max_batch_size=1)
        batcher.start()
        pending = [asyncio.create_task(batcher.submit([f"t{i}"])) for i in range(5)]
        await asyncio.sleep(0.01)
        await batcher.stop()
        assert all(p.done() and not p.exception() for p in pending)
        with pytest.raises(Overloaded, match="shutting down"):
            await batcher.submit(["late"])

    asyncio.run(main())


def test_stop_while_a_batch_waits_for_announced_requests(predictor: Predictor) -> None:
    slow = SlowPredictor(predictor, delay=0.0)

    async def main() -> float:
        batcher = make_batcher(slow, max_wait_ms=2000.0)
        batcher.start()
        batcher.announce()  # never arrives: the batch would wait up to 2 s
        pending = asyncio.create_task(batcher.submit(["forming"]))
        await asyncio.sleep(0.02)
        started = time.monotonic()
        await batcher.stop()
        assert pending.done() and len(pending.result().probabilities) == 1
        return time.monotonic() - started

    assert asyncio.run(main()) < 1.0


def test_length_groups_bucket_similar_lengths() -> None:
    lengths = [3, 200, 4, 3, 12, 210, 5]
    groups = length_groups(lengths, max_group=256)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert len(groups) == 2  # typical headlines together, the two long outliers apart
    for g in groups:
        lens = [lengths[i] for i in g]
        assert max(lens) <= min(lens) * _GROUP_PAD_FACTOR + _GROUP_PAD_SLACK
    assert len(length_groups([5] * 10, max_group=4)) == 3


def test_predictor_matches_single_text_predictions(predictor: Predictor) -> None:
    texts = ["a b c", "Federer wins", "the of", "oil " * 30, "chip"]
    together = predictor.predict(texts)
    for i, t in enumerate(texts):
        np.testing.assert_allclose(predictor.predict([t]).probabilities[0], together.probabilities[i], atol=1e-6)
    assert together.empty == [False, False, True, False, False]


def test_available_cpus() -> None:
    assert 1 <= available_cpus() <= 1024
