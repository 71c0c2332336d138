"""Where a lone ``POST /predict`` spends its time: each stage of the request path timed alone.

Stages, each on the real component with one real headline, timed over many repeats (median
per call): parse (the body parser), queue and hand-off (a batch of one through the batcher
with a model that costs nothing: computed on the event loop, as an idle server does, and
handed to the model thread and back, as it did before), forward (the served model's
``Predictor.predict``), encode (the answer's JSON) and log (one access-log line, its share
of the burst encoding included). What the stages do not account for of the end-to-end
figures from ``bench.floor_compare`` is the HTTP protocol, the event loop and the kernel,
which the floor app pays too.

    python -m bench.lone_request                      # artifacts/
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HEADLINE = "Stocks rally as oil prices fall on hopes of a deal"


def per_call_us(call: Callable[[], object], repeats: int = 2000, rounds: int = 5) -> float:
    """Median over ``rounds`` of the mean time of ``repeats`` calls, in microseconds."""
    for _ in range(repeats // 10):
        call()
    means = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(repeats):
            call()
        means.append((time.perf_counter() - started) / repeats * 1e6)
    return statistics.median(means)


class FreeModel:
    """A predictor that costs nothing, to time the batcher around it."""

    def __init__(self, here: bool) -> None:
        self.computes_lone_text_here = here
        self.answer: Any = None

    def predict(self, texts: Sequence[str], *, observe: bool = True) -> Any:
        return self.answer


def batcher_round_trip_us(here: bool, answer: Any, repeats: int = 2000) -> float:
    """One request through submit → batch → model → answer, with a free model (median of rounds)."""
    from service.inference.batching import Batcher

    model = FreeModel(here)
    model.answer = answer

    async def main() -> float:
        batcher = Batcher(lambda: model, max_batch_size=64, max_wait_ms=2.0, max_queue_size=1024)  # type: ignore[arg-type, return-value]
        batcher.start()
        means = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(repeats):
                await batcher.submit([HEADLINE], timeout=10.0)
            means.append((time.perf_counter() - started) / repeats * 1e6)
        await batcher.stop()
        return statistics.median(means)

    return asyncio.run(main())


def breakdown(artifacts_dir: Path) -> dict[str, float]:
    """Microseconds per lone request for each stage."""
    import uvloop

    from service.http.endpoint import render_predictions
    from service.http.predict_body import PredictBodyParser
    from service.inference.predictor import Predictor
    from service.inference.threads import configure_torch_threads
    from service.observability.logs import AccessBuffer

    configure_torch_threads(0)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    body = json.dumps({"text": HEADLINE}).encode()
    parser = PredictBodyParser(64, 1000)
    predictor = Predictor.load(artifacts_dir, device="cpu")
    prediction = predictor.predict([HEADLINE])
    handed: list[bytes] = []
    access = AccessBuffer(handed.append)

    def log_line() -> None:
        access.write("POST", "/predict", 200, 0.61, "0123456789abcdef0123456789abcdef")
        if len(access._pending) >= 50:  # a burst, as the flush timer would hand it over
            access.flush()
            handed.clear()

    stages = {
        "parse": per_call_us(lambda: parser.parse(body)),
        "queue + hand-off, computed on the event loop": batcher_round_trip_us(True, prediction),
        "queue + hand-off to the model thread and back": batcher_round_trip_us(False, prediction, repeats=500),
        "forward (encode + model)": per_call_us(lambda: predictor.predict([HEADLINE]), repeats=300),
        "encode the answer": per_call_us(lambda: render_predictions(prediction)),
        "access log": per_call_us(log_line),
    }
    assert np.isfinite(list(stages.values())).all()
    return stages


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lone_request", description=__doc__.split("\n")[0])
    parser.add_argument("--artifacts-dir", type=Path, default=ROOT / "artifacts")
    args = parser.parse_args(argv)
    stages = breakdown(args.artifacts_dir)
    print("| stage | µs per lone request |\n|---|---:|")
    for name, us in stages.items():
        print(f"| {name} | {us:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
