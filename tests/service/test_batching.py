"""The dynamic batcher with a real (tiny) model, driven deterministically.

Batches run behind a gate the test opens (``GatedPredictor``), requests are queued by letting
the event loop run once, and the ``max_wait`` deadline reads a clock the test sets by hand: no
test depends on how fast the machine is, and none sleeps to make something happen.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from service.inference.batching import Batcher, DeadlineExceeded, ModelThread, Overloaded, RequestTooLarge
from service.inference.predictor import (
    _GROUP_PAD_FACTOR,
    _GROUP_PAD_SLACK,
    Prediction,
    Predictor,
    length_groups,
)
from service.inference.threads import available_cpus, configure_torch_threads
from tests.service.conftest import distinct_texts, make_artifact

# Far longer than any test runs: a batch that waited for its deadline would fail the test.
LONG_WAIT_MS = 60_000.0
NEVER = 10.0  # seconds a test allows for something that should happen at once


class GatedPredictor:
    """Delegates to a real Predictor. Records each batch, then holds it until the test opens ``gate``."""

    def __init__(self, inner: Predictor, *, gated: bool = True) -> None:
        self.inner = inner
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self._started = threading.Semaphore(0)
        self.finished = 0  # batches that left predict (answered or failed)

    def predict(self, texts: Sequence[str], *, observe: bool = True) -> Prediction:
        self.batches.append(list(texts))
        self._started.release()
        try:
            assert self.gate.wait(NEVER), "the test never opened the gate"
            if any("boom" in t for t in texts):
                raise RuntimeError("boom in batch")
            return self.inner.predict(texts, observe=observe)
        finally:
            self.finished += 1

    async def started(self) -> None:
        """Wait until the next batch is inside ``predict`` (on the model thread)."""
        assert await asyncio.to_thread(self._started.acquire, True, NEVER), "no batch started"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def predictor(artifacts_dir: Path) -> Predictor:
    return Predictor.load(artifacts_dir, device="cpu")


def make_batcher(model: GatedPredictor, **kw: object) -> Batcher:
    opts: dict[str, object] = {"max_batch_size": 64, "max_wait_ms": LONG_WAIT_MS, "max_queue_size": 1024} | kw
    return Batcher(lambda: model, **opts)  # type: ignore[arg-type, return-value]


async def queued() -> None:
    """Let every task created so far run up to its first wait (``submit`` queues before it awaits)."""
    for _ in range(3):
        await asyncio.sleep(0)


def assert_own_answers(texts: Sequence[str], results: Sequence[Prediction], predictor: Predictor) -> None:
    """Each request's answer is its own texts' single-text answer (distinct texts: a swap shows)."""
    singles = [predictor.predict([t]).probabilities[0] for t in texts]
    assert len({tuple(np.round(p, 5)) for p in singles}) == len(texts), "texts must give distinct answers"
    got = np.concatenate([r.probabilities for r in results])
    np.testing.assert_allclose(got, np.stack(singles), atol=1e-6)


def test_requests_queued_while_a_batch_runs_form_the_next_batch(predictor: Predictor) -> None:
    model = GatedPredictor(predictor)
    texts = distinct_texts(39)

    async def main() -> list[Prediction]:
        batcher = make_batcher(model)
        batcher.start()
        first = asyncio.create_task(batcher.submit([texts[0]]))
        await model.started()  # the first batch is running on the model thread
        rest = [asyncio.create_task(batcher.submit(texts[i : i + 2])) for i in range(1, 39, 2)]
        await queued()
        assert batcher.queued_texts == 38
        model.gate.set()
        results = await asyncio.gather(first, *rest)
        await batcher.stop()
        return results

    results = asyncio.run(main())
    assert [len(b) for b in model.batches] == [1, 38]  # everything that queued meanwhile ran as one batch
    assert_own_answers(texts, results, predictor)
    assert all(r.version == predictor.version for r in results)
    assert [len(r.probabilities) for r in results] == [1] + [2] * 19


def test_a_batch_never_exceeds_max_batch_size_and_never_splits_a_request(predictor: Predictor) -> None:
    model = GatedPredictor(predictor)
    texts = distinct_texts(12)
    sizes = [1, 3, 2, 4, 1, 1]  # requests of these many texts, queued behind a running batch

    async def main() -> list[Prediction]:
        batcher = make_batcher(model, max_batch_size=5)
        batcher.start()
        first = asyncio.create_task(batcher.submit(["running"]))
        await model.started()
        tasks, start = [], 0
        for size in sizes:
            tasks.append(asyncio.create_task(batcher.submit(texts[start : start + size])))
            start += size
        await queued()
        model.gate.set()
        results = await asyncio.gather(*tasks)
        await first
        await batcher.stop()
        return results

    results = asyncio.run(main())
    # Greedy in arrival order: 1+3 (the 2 would make 6), then 2 (the 4 would make 6), then 4+1, then 1.
    assert [len(b) for b in model.batches[1:]] == [4, 2, 5, 1]
    assert_own_answers(texts, results, predictor)


def test_a_full_batch_queued_while_one_runs_starts_without_the_event_loop(predictor: Predictor) -> None:
    model = GatedPredictor(predictor)
    texts = distinct_texts(4)

    async def main() -> list[Prediction]:
        batcher = make_batcher(model, max_batch_size=2)
        batcher.start()
        first = asyncio.create_task(batcher.submit(texts[:1]))
        await model.started()
        full = asyncio.create_task(batcher.submit(texts[1:3]))  # a whole batch: cannot grow by waiting
        partial = asyncio.create_task(batcher.submit(texts[3:]))  # could still grow: waits for the model
        await queued()
        model.gate.set()
        # The event loop is blocked from here: only the model thread can go on to the next batch.
        assert model._started.acquire(True, NEVER), "the full batch waited for the event loop"
        assert model.batches == [texts[:1], texts[1:3]]
        results = await asyncio.gather(first, full, partial)
        await batcher.stop()
        return results

    results = asyncio.run(main())
    assert model.batches == [texts[:1], texts[1:3], texts[3:]]
    assert_own_answers(texts, results, predictor)


def test_idle_request_runs_without_waiting(predictor: Predictor) -> None:
    model = GatedPredictor(predictor, gated=False)

    async def main() -> Prediction:
        batcher = make_batcher(model)  # max_wait of a minute: only an idle fast path can answer in time
        batcher.start()
        result = await asyncio.wait_for(batcher.submit(["Oil prices"]), NEVER)
        await batcher.stop()
        return result

    assert len(asyncio.run(main()).probabilities) == 1


def test_a_batch_waits_for_an_announced_request(predictor: Predictor) -> None:
    model = GatedPredictor(predictor, gated=False)

    async def main() -> None:
        batcher = make_batcher(model)
        batcher.start()
        batcher.announce()  # a second /predict request is being read
        first = asyncio.create_task(batcher.submit(["first"]))
        await queued()
        assert model.batches == [], "the batch ran without waiting for the announced request"
        batcher.withdraw()
        second = await asyncio.wait_for(batcher.submit(["second"]), NEVER)
        await first
        assert len(second.probabilities) == 1
        await batcher.stop()

    asyncio.run(main())
    assert model.batches == [["first", "second"]]


def test_the_wait_deadline_is_counted_once_from_the_first_request(predictor: Predictor) -> None:
    model = GatedPredictor(predictor, gated=False)
    clock = FakeClock()

    async def main() -> None:
        batcher = make_batcher(model, clock=clock)
        batcher.start()
        batcher.announce()  # announced, never submitted: only the deadline ends the wait
        first = asyncio.create_task(batcher.submit(["first"]))
        await queued()
        assert model.batches == []
        clock.now = LONG_WAIT_MS / 1000 + 1  # past first's deadline; a deadline restarted by a
        second = batcher.submit(["second"])  # newer arrival would keep waiting a minute
        await asyncio.wait_for(asyncio.gather(first, second), NEVER)
        batcher.withdraw()
        await batcher.stop()

    asyncio.run(main())
    assert model.batches == [["first", "second"]]


def test_an_announcement_that_never_arrives_delays_a_batch_only_until_max_wait(predictor: Predictor) -> None:
    model = GatedPredictor(predictor, gated=False)

    async def main() -> None:
        batcher = make_batcher(model, max_wait_ms=20.0)
        batcher.start()
        batcher.announce()
        await asyncio.wait_for(batcher.submit(["alone"]), NEVER)
        batcher.withdraw()
        await batcher.stop()

    asyncio.run(main())
    assert model.batches == [["alone"]]


def test_failing_batch_fails_only_its_callers(predictor: Predictor) -> None:
    model = GatedPredictor(predictor)

    async def main() -> list[object]:
        batcher = make_batcher(model)
        batcher.start()
        a = asyncio.create_task(batcher.submit(["fine a"]))
        await model.started()
        b = asyncio.create_task(batcher.submit(["boom"]))
        c = asyncio.create_task(batcher.submit(["unlucky neighbour"]))
        await queued()
        model.gate.set()
        results = await asyncio.gather(a, b, c, return_exceptions=True)
        d = await batcher.submit(["fine d"])  # the batcher keeps running
        await batcher.stop()
        return [*results, d]

    a, b, c, d = asyncio.run(main())
    assert isinstance(a, Prediction) and isinstance(d, Prediction)
    assert isinstance(b, RuntimeError) and isinstance(c, RuntimeError)
    assert model.batches == [["fine a"], ["boom", "unlucky neighbour"], ["fine d"]]


def test_an_error_outside_the_model_fails_only_its_batch_and_the_batcher_keeps_serving(predictor: Predictor) -> None:
    model = GatedPredictor(predictor, gated=False)

    def broken_probe() -> bool:
        raise RuntimeError("probe broke")

    async def main() -> tuple[BaseException | Prediction, Prediction]:
        batcher = make_batcher(model, max_wait_ms=0)
        batcher.start()
        first = asyncio.wait_for(batcher.submit(["first"], gone=broken_probe), NEVER)
        (failed,) = await asyncio.gather(first, return_exceptions=True)
        after = await asyncio.wait_for(batcher.submit(["second"]), NEVER)
        await batcher.stop()
        return failed, after

    failed, after = asyncio.run(main())
    assert isinstance(failed, RuntimeError) and "probe broke" in str(failed)
    assert len(after.probabilities) == 1 and model.batches == [["second"]]


def test_queue_bound_raises_overloaded(predictor: Predictor) -> None:
    model = GatedPredictor(predictor)

    async def main() -> list[Prediction]:
        batcher = make_batcher(model, max_queue_size=4)
        batcher.start()
        running = asyncio.create_task(batcher.submit(["in flight"]))
        await model.started()
        waiting = asyncio.create_task(batcher.submit(["q1", "q2", "q3"]))
        await queued()
        with pytest.raises(Overloaded, match=r"queue full \(3 texts waiting, limit 4\)"):
            await batcher.submit(["q4", "q5"])
        fits = asyncio.create_task(batcher.submit(["q4"]))
        await queued()
        model.gate.set()
        results = await asyncio.gather(running, waiting, fits)
        await batcher.stop()
        return results

    assert [len(r.probabilities) for r in asyncio.run(main())] == [1, 3, 1]


def test_a_request_larger_than_the_queue_is_not_overloaded(predictor: Predictor) -> None:
    """Retrying cannot help such a request, so it must not get Overloaded (503 + Retry-After)."""
    model = GatedPredictor(predictor, gated=False)

    async def main() -> Prediction:
        batcher = make_batcher(model, max_queue_size=4)
        batcher.start()  # idle: nothing queued or running
        with pytest.raises(RequestTooLarge, match="5 texts can never be queued"):
            await batcher.submit(["a", "b", "c", "d", "e"])
        fits = await batcher.submit(["a", "b", "c", "d"])  # exactly the queue's size fits when idle
        await batcher.stop()
        return fits

    assert len(asyncio.run(main()).probabilities) == 4
    assert not issubclass(RequestTooLarge, Overloaded)


def test_timeout_skips_the_request_and_batching_can_be_disabled(predictor: Predictor) -> None:
    model = GatedPredictor(predictor)

    async def main() -> None:
        batcher = make_batcher(model, max_batch_size=1)
        batcher.start()
        first = asyncio.create_task(batcher.submit(["slow one"]))
        await model.started()
        with pytest.raises(TimeoutError):  # the gate is shut: it cannot finish in time
            await batcher.submit(["gives up"], timeout=0.01)
        others = [asyncio.create_task(batcher.submit([f"t{i}"])) for i in range(4)]
        await queued()
        model.gate.set()
        assert len(await asyncio.gather(*others)) == 4
        await first
        await batcher.stop()

    asyncio.run(main())
    assert model.batches == [["slow one"], ["t0"], ["t1"], ["t2"], ["t3"]]  # one each; "gives up" never ran


def test_stop_answers_queued_requests_then_refuses(predictor: Predictor) -> None:
    model = GatedPredictor(predictor)

    async def main() -> None:
        batcher = make_batcher(model, max_batch_size=1)
        batcher.start()
        pending = [asyncio.create_task(batcher.submit([f"t{i}"])) for i in range(5)]
        await model.started()
        stopping = asyncio.create_task(batcher.stop())
        await queued()
        with pytest.raises(Overloaded, match="shutting down"):  # refused as soon as stop begins
            await batcher.submit(["late"])
        model.gate.set()
        await asyncio.wait_for(stopping, NEVER)
        assert all(p.done() and not p.exception() for p in pending)

    asyncio.run(main())
    assert len(model.batches) == 5


def test_shutdown_timeout_cancels_in_flight_work(predictor: Predictor) -> None:
    model = GatedPredictor(predictor)

    async def main() -> list[object]:
        batcher = make_batcher(model, max_batch_size=1)
        batcher.start()
        running = asyncio.create_task(batcher.submit(["stuck"]))
        await model.started()
        waiting = asyncio.create_task(batcher.submit(["behind it"]))
        await queued()
        # The running batch never finishes (gate shut): stop gives up after its timeout,
        # without waiting for the model thread.
        await asyncio.wait_for(batcher.stop(timeout=0.05), NEVER)
        assert model.finished == 0, "stop waited for the stuck forward pass"
        results = await asyncio.gather(running, waiting, return_exceptions=True)
        model.gate.set()  # let the model thread end
        return results

    results = asyncio.run(main())
    assert all(isinstance(r, Overloaded) and "shutting down" in str(r) for r in results), results
    assert model.batches == [["stuck"]]


def test_stop_while_a_batch_waits_for_announced_requests(predictor: Predictor) -> None:
    model = GatedPredictor(predictor, gated=False)

    async def main() -> None:
        batcher = make_batcher(model)
        batcher.start()
        batcher.announce()  # never arrives: the batch would wait a minute
        pending = asyncio.create_task(batcher.submit(["forming"]))
        await queued()
        assert model.batches == []
        await asyncio.wait_for(batcher.stop(), NEVER)
        assert pending.done() and len(pending.result().probabilities) == 1

    asyncio.run(main())


def test_warm_up_runs_on_the_model_thread_between_live_batches(predictor: Predictor) -> None:
    order: list[str] = []  # every forward pass, in the order the model thread ran them
    threads: set[str] = set()

    class Recording(Predictor):
        def predict(self, texts: Sequence[str], *, observe: bool = True) -> Prediction:
            threads.add(threading.current_thread().name)
            order.append("warm")
            assert not observe, "warm-up must stay out of the drift counters"
            return super().predict(texts, observe=observe)

    class Live(GatedPredictor):
        def predict(self, texts: Sequence[str], *, observe: bool = True) -> Prediction:
            order.append(texts[0])
            return super().predict(texts, observe=observe)

    model = Live(predictor)
    warming = Recording(predictor.artifact, predictor.device)

    async def main() -> None:
        batcher = make_batcher(model)
        batcher.start()
        live = asyncio.create_task(batcher.submit(["live one"]))
        await model.started()
        warm = asyncio.create_task(batcher.warm_up(warming))  # e.g. a reload's new model
        await queued()
        second = asyncio.create_task(batcher.submit(["live two"]))
        await queued()
        model.gate.set()
        await asyncio.gather(live, second, warm)
        await batcher.stop()

    asyncio.run(main())
    # The batcher's one model thread, never a second one; and the event loop (the main thread
    # here), which computes lone texts on the CPU, for the single-text passes.
    assert threads == {"model_0", "MainThread"}, threads
    lone = [texts for texts in warming.warmup_batches() if len(texts) == 1]
    assert order.count("warm") == len(warming.warmup_batches()) + len(lone) and lone
    # A live request waits for at most one warm-up pass, not for the whole warm-up.
    assert order[:3] == ["live one", "warm", "live two"], order


def test_length_groups_bucket_similar_lengths() -> None:
    lengths = [3, 200, 4, 3, 12, 210, 5]
    groups = length_groups(lengths, max_group=256)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert len(groups) == 2  # typical headlines together, the two long outliers apart
    for g in groups:
        lens = [lengths[i] for i in g]
        assert max(lens) <= min(lens) * _GROUP_PAD_FACTOR + _GROUP_PAD_SLACK
    assert len(length_groups([5] * 10, max_group=4)) == 3


MIXED = ["a b c", "Federer wins", "the of", "oil " * 30, "chip", "Stocks rally as oil prices fall " * 12]


@pytest.mark.parametrize("pooling", ["last", "max", "last_max"])
@pytest.mark.parametrize("rnn_type", ["rnn", "gru", "bigru"])
def test_batched_equals_single_for_every_model_type(tmp_path: Path, rnn_type: str, pooling: str) -> None:
    """Padding, packing and length groups never change an answer, for every architecture training offers
    (at the shipped size: ModelConfig's defaults, the same as training's)."""
    version = "20260101T000000Z-000003"
    make_artifact(tmp_path, seed=3, version=version, size="default", rnn_type=rnn_type, pooling=pooling)
    predictor = Predictor.load(tmp_path, device="cpu")
    assert (predictor.artifact.config.rnn_type, predictor.artifact.config.pooling) == (rnn_type, pooling)
    together = predictor.predict(MIXED)
    assert len(length_groups([len(predictor.encoder.encode(t)[0]) for t in MIXED], 256)) == 2
    for i, text in enumerate(MIXED):
        np.testing.assert_allclose(predictor.predict([text]).probabilities[0], together.probabilities[i], atol=1e-6)
    assert together.empty == [False, False, True, False, False, False]


def test_serving_defaults_are_what_training_ships() -> None:
    from contract.model import ModelConfig
    from training.config import TrainConfig

    trained = ModelConfig(
        100, 4, subword_buckets=TrainConfig.subword_buckets, linear_head=TrainConfig.linear_head,
        linear_bigram_buckets=TrainConfig.linear_bigram_buckets,
        linear_gram_buckets=TrainConfig.linear_gram_factor * TrainConfig.subword_buckets,
    )  # fmt: skip
    assert TrainConfig().model_config(100, 4) == trained
    assert (ModelConfig(100, 4).hidden_dim, ModelConfig(100, 4).pooling) == (64, "last_max")


# --- torch threads: CPU affinity and the cgroup quota --------------------------------------


def fake_cgroup(root: Path, *, v2: str | None = None, v1: tuple[str, str] | None = None) -> Path:
    if v2 is not None:
        (root / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (root / "cpu").mkdir()
        (root / "cpu" / "cpu.cfs_quota_us").write_text(v1[0] + "\n")
        (root / "cpu" / "cpu.cfs_period_us").write_text(v1[1] + "\n")
    return root


@pytest.mark.parametrize(
    ("affinity", "v2", "v1", "expected"),
    [
        (8, None, None, 8),  # no cgroup limit: the affinity mask decides
        (8, "max 100000", None, 8),  # v2, unlimited
        (8, "150000 100000", None, 2),  # v2 quota of 1.5 CPUs rounds up
        (8, "200000 100000", None, 2),
        (2, "400000 100000", None, 2),  # affinity lower than the quota
        (8, None, ("300000", "100000"), 3),  # cgroup v1
        (8, None, ("-1", "100000"), 8),  # v1, unlimited
        (8, "50000 100000", None, 1),  # never below one
    ],
)
def test_available_cpus_follow_affinity_and_cgroup_quota(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    affinity: int,
    v2: str | None,
    v1: tuple[str, str] | None,
    expected: int,
) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(affinity)))
    assert available_cpus(fake_cgroup(tmp_path, v2=v2, v1=v1)) == expected


def test_torch_threads_default_to_usable_cpus_minus_one(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.setattr("service.inference.threads.available_cpus", lambda: 4)
    try:
        assert configure_torch_threads(0) == 3 and torch.get_num_threads() == 3
        assert configure_torch_threads(2) == 2 and torch.get_num_threads() == 2  # an explicit count wins
        monkeypatch.setattr("service.inference.threads.available_cpus", lambda: 1)
        assert configure_torch_threads(0) == 1  # never zero
    finally:
        torch.set_num_threads(before)


def test_available_cpus_on_this_machine() -> None:
    assert 1 <= available_cpus() <= 1024


class SendingAheadPredictor(GatedPredictor):
    """Also takes batches sent ahead, as a model process does: computed at once, collected later."""

    def __init__(self, inner: Predictor) -> None:
        super().__init__(inner)
        self.sent: list[list[str]] = []
        self.collected = 0

    def send_ahead(self, texts: Sequence[str]) -> object:
        self.sent.append(list(texts))
        result = self.inner.predict(texts)

        def collect() -> Prediction:
            self.collected += 1
            return result

        return collect


def test_a_full_batch_is_sent_ahead_and_counts_as_running_from_then_on(predictor: Predictor) -> None:
    """The model process computes a sent batch whole, behind the running one. A caller that
    stops waiting meanwhile is left out, and the others get their own rows of the answer."""
    model = SendingAheadPredictor(predictor)
    texts = distinct_texts(3)

    async def main() -> list[BaseException | Prediction]:
        batcher = make_batcher(model, max_batch_size=2)
        batcher.start()
        first = asyncio.create_task(batcher.submit(texts[:1]))
        await model.started()
        leaving = asyncio.create_task(batcher.submit(texts[1:2]))
        staying = asyncio.create_task(batcher.submit(texts[2:3]))  # with the one above: a full batch
        await queued()
        assert model.sent == [texts[1:3]], "the full batch was not sent while the first one ran"
        leaving.cancel()  # its caller gives up while the batch waits for its turn
        await queued()
        model.gate.set()
        results = await asyncio.gather(first, leaving, staying, return_exceptions=True)
        await batcher.stop()
        return results

    first, leaving, staying = asyncio.run(main())
    assert model.batches == [texts[:1]]  # the sent batch never went through predict
    assert model.collected == 1  # its answer was claimed even though one caller had gone
    assert isinstance(leaving, asyncio.CancelledError), leaving
    assert isinstance(first, Prediction) and isinstance(staying, Prediction)
    assert_own_answers([texts[0], texts[2]], [first, staying], predictor)  # row 1 of the sent batch, not row 0


def test_a_deadline_that_passes_in_a_sent_batch_says_the_batch_was_running(predictor: Predictor) -> None:
    model = SendingAheadPredictor(predictor)
    texts = distinct_texts(3)

    async def main() -> BaseException | Prediction:
        batcher = make_batcher(model, max_batch_size=2)
        batcher.start()
        first = asyncio.create_task(batcher.submit(texts[:1]))
        await model.started()
        late = asyncio.create_task(batcher.submit(texts[1:3], timeout=0.05))
        result = (await asyncio.gather(late, return_exceptions=True))[0]
        model.gate.set()
        await first
        await batcher.stop()
        return result

    result = asyncio.run(main())
    assert isinstance(result, DeadlineExceeded) and result.computed, result


class CountingMetrics:
    """The BatchMetrics protocol, recorded."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []
        self.dropped: list[str] = []

    def observe_batch(self, texts: int, requests: int, compute_s: float) -> None:
        self.batches.append((texts, requests))

    def observe_queue_wait(self, seconds: float) -> None:
        pass

    def set_queue_depth(self, texts: int) -> None:
        pass

    def count_dropped(self, reason: str) -> None:
        self.dropped.append(reason)


def test_batch_sizes_count_what_the_model_computed_as_the_drift_counters_do(predictor: Predictor) -> None:
    """A sent batch is computed whole, a departed caller's rows included: the batch-size metric
    counts those rows too, as the drift counters (which count in the model) do."""
    model = SendingAheadPredictor(predictor)
    metrics = CountingMetrics()
    texts = distinct_texts(3)

    async def main() -> None:
        batcher = Batcher(
            lambda: model,  # type: ignore[arg-type, return-value]
            max_batch_size=2,
            max_wait_ms=LONG_WAIT_MS,
            max_queue_size=1024,
            metrics=metrics,
        )
        batcher.start()
        first = asyncio.create_task(batcher.submit(texts[:1]))
        await model.started()
        leaving = asyncio.create_task(batcher.submit(texts[1:2]))
        staying = asyncio.create_task(batcher.submit(texts[2:3]))
        await queued()
        leaving.cancel()
        await queued()
        model.gate.set()
        await asyncio.gather(first, leaving, staying, return_exceptions=True)
        await batcher.stop()

    asyncio.run(main())
    assert metrics.batches == [(1, 1), (2, 2)], metrics.batches  # the sent batch: both texts computed


def test_a_deadline_and_the_batch_start_never_both_claim_a_request(predictor: Predictor) -> None:
    """The deadline timer (event loop) and the batch's start (model thread) race for a forming
    request. Here the timer fires in the middle of the start's checks, the moment it used to
    slip in: the request is either dropped uncomputed (504 "not computed", counted) or
    computed (504 "still running"), never answered "not computed" and computed anyway."""
    model = GatedPredictor(predictor)
    model.gate.set()
    metrics = CountingMetrics()
    batcher = Batcher(
        lambda: model,  # type: ignore[arg-type, return-value]
        max_batch_size=64,
        max_wait_ms=0,
        max_queue_size=1024,
        metrics=metrics,
    )

    async def main() -> tuple[list[object], BaseException | None]:
        from service.inference.batching import _FORMING, _Request

        loop = asyncio.get_running_loop()
        request = _Request(["Stocks rally"], loop.create_future(), timeout_s=0.05)
        request.stage = _FORMING

        def gone() -> bool:  # called by the batch's start, just before it marks the request running
            batcher._expire(request)  # the deadline timer fires right then
            return False

        request.gone = gone
        live, dropped = batcher._select([request], now=0.0)
        return live, request.future.exception()

    live, error = asyncio.run(main())
    assert isinstance(error, DeadlineExceeded) and not error.computed
    assert live == [], "answered 'not computed' and computed anyway"
    assert metrics.dropped == ["deadline"]


def test_a_batch_with_an_outlier_length_runs_in_length_groups(
    predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The grouping is used, not only defined: short titles are not padded to a 200-token one."""
    calls: list[int] = []
    forward = Predictor._forward

    def counting(self: Predictor, sequences: list[Sequence[object]], same_length: bool) -> np.ndarray:
        calls.append(len(sequences))
        return forward(self, sequences, same_length)

    texts = [*distinct_texts(6), " ".join(["stocks rally"] * 100)]
    alone = [predictor.predict([t]).probabilities[0] for t in texts]
    monkeypatch.setattr(Predictor, "_forward", counting)
    together = predictor.predict(texts).probabilities
    assert sorted(calls) == [1, 6], calls
    np.testing.assert_allclose(together, np.array(alone), atol=1e-6)


class ThreadRecorder:
    """A real predictor that can compute a lone text in this process; records the thread of each batch."""

    computes_lone_text_here = True

    def __init__(self, inner: Predictor, delay_s: float = 0.0) -> None:
        self.inner = inner
        self.delay_s = delay_s
        self.threads: list[tuple[int, str]] = []  # (texts, thread name) per batch

    def predict(self, texts: Sequence[str], *, observe: bool = True) -> Prediction:
        self.threads.append((len(texts), threading.current_thread().name))
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.inner.predict(texts, observe=observe)


def test_a_lone_text_on_an_idle_model_is_computed_on_the_event_loop(predictor: Predictor) -> None:
    model = ThreadRecorder(predictor)

    async def main() -> tuple[Prediction, str]:
        batcher = Batcher(lambda: model, max_batch_size=64, max_wait_ms=LONG_WAIT_MS, max_queue_size=1024)  # type: ignore[arg-type, return-value]
        batcher.start()
        result = await asyncio.wait_for(batcher.submit(["Oil prices"]), NEVER)
        await batcher.stop()
        return result, threading.current_thread().name

    result, loop_thread = asyncio.run(main())
    assert model.threads == [(1, loop_thread)]
    np.testing.assert_allclose(result.probabilities, predictor.predict(["Oil prices"]).probabilities, atol=1e-6)


def test_requests_that_arrive_together_still_form_one_batch_on_the_model_thread(predictor: Predictor) -> None:
    model = ThreadRecorder(predictor)
    texts = distinct_texts(8)

    async def main() -> list[Prediction]:
        batcher = Batcher(lambda: model, max_batch_size=64, max_wait_ms=LONG_WAIT_MS, max_queue_size=1024)  # type: ignore[arg-type, return-value]
        batcher.start()
        results = await asyncio.wait_for(asyncio.gather(*(batcher.submit([t]) for t in texts)), NEVER)
        await batcher.stop()
        return list(results)

    results = asyncio.run(main())
    assert model.threads == [(8, "model_0")]
    assert_own_answers(texts, results, predictor)


def test_a_lone_text_waits_for_the_model_thread_while_it_has_other_work(predictor: Predictor) -> None:
    model = ThreadRecorder(predictor)
    gate = threading.Event()

    async def main() -> None:
        batcher = Batcher(lambda: model, max_batch_size=64, max_wait_ms=LONG_WAIT_MS, max_queue_size=1024)  # type: ignore[arg-type, return-value]
        batcher.start()
        busy = asyncio.ensure_future(batcher.run_on_model_thread(gate.wait, NEVER))  # e.g. a reload's load
        await queued()
        request = asyncio.ensure_future(batcher.submit(["Oil prices"]))
        await queued()
        assert not request.done()
        gate.set()
        await asyncio.wait_for(asyncio.gather(busy, request), NEVER)
        await batcher.stop()

    asyncio.run(main())
    assert model.threads == [(1, "model_0")]


def test_a_deadline_that_passes_while_the_loop_computes_is_still_a_timeout(predictor: Predictor) -> None:
    model = ThreadRecorder(predictor, delay_s=0.05)

    async def main() -> None:
        batcher = Batcher(lambda: model, max_batch_size=64, max_wait_ms=LONG_WAIT_MS, max_queue_size=1024)  # type: ignore[arg-type, return-value]
        batcher.start()
        with pytest.raises(DeadlineExceeded) as raised:
            await asyncio.wait_for(batcher.submit(["Oil prices"], timeout=0.01), NEVER)
        assert raised.value.computed
        await batcher.stop()

    asyncio.run(main())
    assert len(model.threads) == 1 and model.threads[0][1] != "model_0"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="thread names are read from /proc (Linux)")
def test_model_thread_is_named_for_the_os() -> None:
    """``top -H``, py-spy and bench.thread_split tell the model thread apart from the event loop by this name."""
    executor = ModelThread()
    try:
        comm = executor.submit(lambda: Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text()).result()
    finally:
        executor.shutdown()
    assert comm.strip() == "hc-model"
