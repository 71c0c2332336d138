"""The serving comparison point: a plain ~30-line FastAPI app with a 2 ms micro-batcher.

What a careful engineer writes in an afternoon: a pydantic request model, an asyncio queue,
a consumer that waits up to 2 ms to fill a batch of at most 64 texts, the forward pass in a
worker thread, the same response shape as the service. It uses the service's Predictor (same
model, preprocessing and cost per text), so the difference is the HTTP path and the batcher.
Run: ``python -m bench.reference_batcher ARTIFACTS_DIR PORT`` (bench/serve_bench.py does).
"""

import asyncio
import contextlib
import sys
import time

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from service.inference.predictor import Predictor


class Body(BaseModel):
    text: str


async def batcher(queue: asyncio.Queue, predictor: Predictor) -> None:
    while True:
        batch = [await queue.get()]
        deadline = time.monotonic() + 0.002
        while len(batch) < 64 and (left := deadline - time.monotonic()) > 0:
            try:
                batch.append(await asyncio.wait_for(queue.get(), left))
            except TimeoutError:
                break
        result = await asyncio.to_thread(predictor.predict, [text for text, _ in batch])
        for row, empty, (_, future) in zip(result.probabilities.tolist(), result.empty, batch, strict=True):
            probabilities = dict(sorted(zip(result.classes, row, strict=True), key=lambda kv: -kv[1]))
            future.set_result({"label": next(iter(probabilities)), "probabilities": probabilities, "empty": empty})


def make_app(artifacts_dir: str) -> FastAPI:
    predictor, queue = Predictor.load(artifacts_dir, device="cpu"), asyncio.Queue()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        task = asyncio.create_task(batcher(queue, predictor))
        yield
        task.cancel()

    app = FastAPI(lifespan=lifespan)

    @app.post("/predict")
    async def predict(body: Body) -> dict:
        future = asyncio.get_running_loop().create_future()
        await queue.put((body.text, future))
        return {"model_version": predictor.version, "predictions": [await future]}

    @app.get("/health/ready")
    async def ready() -> dict:
        return {"status": "ready"}

    return app


if __name__ == "__main__":
    torch.set_num_threads(1)  # one CPU for the model thread, one for the event loop (as the service)
    uvicorn.run(make_app(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
