"""The dynamic batcher: one Future per request, one consumer task, model work in one thread.

How a batch forms: the consumer takes the oldest waiting request, then everything already
queued up to ``max_batch_size`` texts. It waits for more (at most until ``max_wait_ms``
after the first request arrived; the deadline is computed once) only while requests are
known to be on their way: the HTTP layer announces a /predict request when it starts
reading it (:meth:`Batcher.announce`) and the announcement is withdrawn when it is
submitted or fails validation. An idle server therefore never waits. Under load, batches
form naturally: while one batch runs in the worker thread, new requests queue up and become
the next batch.

A request is never split: its texts stay together. ``max_batch_size=1`` runs every request
alone (the no-batching baseline).

No work for requests nobody waits for: each request has a deadline (the client's
``X-Request-Timeout-Ms``, capped by the server's request timeout). A timer answers it the
moment the deadline passes: still queued, it leaves the queue uncomputed (counted as dropped,
reason ``deadline``); already running, its caller gets the timeout at once and the batch's
result for it is discarded. A request whose client disconnected is dropped (reason
``disconnected``) when its batch is about to start; the HTTP layer hands in a cheap probe.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from service.predictor import Prediction, Predictor

log = logging.getLogger("service.batching")


class Overloaded(Exception):
    """The queue is full (or the batcher is draining); the caller should retry later."""


class DeadlineExceeded(TimeoutError):
    """The request's deadline passed; ``computed`` is False when it never reached the model."""

    def __init__(self, timeout_s: float, computed: bool) -> None:
        where = "while its batch was running" if computed else "while queued; it was not computed"
        super().__init__(f"deadline of {timeout_s * 1000:g} ms passed {where}")
        self.timeout_s = timeout_s
        self.computed = computed


class ClientDisconnected(Exception):
    """The client left before the request's batch started; it was not computed."""


class BatchMetrics(Protocol):
    def observe_batch(self, texts: int, requests: int, compute_s: float) -> None: ...
    def observe_queue_wait(self, seconds: float) -> None: ...
    def set_queue_depth(self, texts: int) -> None: ...
    def count_dropped(self, reason: str) -> None: ...


# Where a request is; a deadline timer acts on it accordingly.
_QUEUED, _FORMING, _RUNNING = 0, 1, 2


@dataclass(eq=False, slots=True)
class _Request:
    texts: Sequence[str]
    future: asyncio.Future[Prediction]
    enqueued: float = field(default_factory=time.monotonic)
    timeout_s: float | None = None
    deadline: float = math.inf
    gone: Callable[[], bool] | None = None  # True once the client disconnected
    stage: int = _QUEUED


def split_prediction(prediction: Prediction, sizes: Sequence[int]) -> list[Prediction]:
    """Cut a merged batch result back into one result per request, in order."""
    parts = []
    start = 0
    for size in sizes:
        stop = start + size
        parts.append(
            Prediction(
                prediction.probabilities[start:stop],
                prediction.empty[start:stop],
                prediction.version,
                prediction.classes,
            )
        )
        start = stop
    return parts


def merge_texts(requests: Sequence[_Request]) -> list[str]:
    return [text for request in requests for text in request.texts]


class Batcher:
    """Queue + consumer task. ``get_predictor`` is read once per batch, so a reload swaps models between batches."""

    def __init__(
        self,
        get_predictor: Callable[[], Predictor],
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue_size: int,
        metrics: BatchMetrics | None = None,
    ) -> None:
        self._get_predictor = get_predictor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue_size = max_queue_size
        self._metrics = metrics
        self._queue: deque[_Request] = deque()
        self._queued_texts = 0
        self._announced = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._current: list[_Request] = []  # the batch being formed or computed
        self._closing = False

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._task = asyncio.get_running_loop().create_task(self._consume(), name="batcher")

    async def stop(self, timeout: float | None = None) -> None:
        """Refuse new work, answer everything queued or running, then stop the consumer."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()  # a batch waiting for announced requests runs now
        if self._task is not None:
            deadline = None if timeout is None else time.monotonic() + timeout
            while (self._queue or self._current) and not self._task.done():
                if deadline is not None and time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.01)
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for request in self._queue:
            if not request.future.done():
                request.future.set_exception(Overloaded("server is shutting down"))
        self._queue.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    @property
    def executor(self) -> ThreadPoolExecutor | None:
        """The model thread; other model work (warm-up) may use it to stay off concurrent batches."""
        return self._executor

    # -- producers -----------------------------------------------------------------------
    def announce(self) -> None:
        """A /predict request has started arriving: a small batch may wait for it."""
        self._announced += 1

    def withdraw(self) -> None:
        """An announced request was submitted, or will never be."""
        if self._announced > 0:
            self._announced -= 1
            if self._announced == 0 and self._wakeup is not None:
                self._wakeup.set()

    async def submit(
        self,
        texts: Sequence[str],
        timeout: float | None = None,
        gone: Callable[[], bool] | None = None,
    ) -> Prediction:
        """Queue ``texts`` and wait for their result.

        ``timeout`` (seconds) is the request's deadline; ``gone`` tells whether its client has
        disconnected. Raises Overloaded, DeadlineExceeded, ClientDisconnected or the model's error.
        """
        if self._closing or self._task is None:
            raise Overloaded("server is shutting down")
        if self._queued_texts + len(texts) > self.max_queue_size:
            raise Overloaded(f"queue full ({self._queued_texts} texts waiting, limit {self.max_queue_size})")
        loop = asyncio.get_running_loop()
        request = _Request(texts, loop.create_future(), time.monotonic(), timeout, gone=gone)
        timer = None
        if timeout is not None:
            request.deadline = request.enqueued + timeout
            timer = loop.call_later(timeout, self._expire, request)
        self._queue.append(request)
        self._queued_texts += len(texts)
        self._set_depth()
        assert self._wakeup is not None
        self._wakeup.set()
        try:
            return await request.future
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(self, request: _Request) -> None:
        """The deadline timer: answer the caller now; drop the request if it has not started."""
        if request.future.done():
            return
        assert request.timeout_s is not None
        if request.stage == _RUNNING:
            request.future.set_exception(DeadlineExceeded(request.timeout_s, computed=True))
            return
        if request.stage == _QUEUED:
            self._queue.remove(request)
            self._queued_texts -= len(request.texts)
            self._set_depth()
        # _FORMING: the batch skips requests whose future is done when it starts.
        self._drop(request, "deadline", DeadlineExceeded(request.timeout_s, computed=False))

    def _drop(self, request: _Request, reason: str, exc: Exception) -> None:
        request.future.set_exception(exc)
        if self._metrics is not None:
            self._metrics.count_dropped(reason)

    # -- consumer ------------------------------------------------------------------------
    def _pop(self) -> _Request:
        request = self._queue.popleft()
        self._queued_texts -= len(request.texts)
        return request

    def _take_queued(self, batch: list[_Request], size: int, first: bool = False) -> int:
        """Move queued requests into ``batch`` while they fit (``first``: take one whatever its size)."""
        while self._queue and ((first and not batch) or size + len(self._queue[0].texts) <= self.max_batch_size):
            request = self._pop()
            if not request.future.done():  # cancelled callers are skipped
                request.stage = _FORMING
                batch.append(request)
                size += len(request.texts)
        return size

    def _start(self, batch: list[_Request], now: float) -> list[_Request]:
        """The requests of ``batch`` still worth computing, marked running; the rest are dropped."""
        live = []
        for request in batch:
            if request.future.done():  # answered by its deadline timer, or cancelled
                continue
            if request.deadline <= now:  # the timer is due but has not run yet
                assert request.timeout_s is not None
                self._drop(request, "deadline", DeadlineExceeded(request.timeout_s, computed=False))
            elif request.gone is not None and request.gone():
                self._drop(request, "disconnected", ClientDisconnected("client disconnected before its batch started"))
            else:
                request.stage = _RUNNING
                live.append(request)
        return live

    async def _fill_batch(self, batch: list[_Request]) -> None:
        """Fill ``batch`` (initially empty) in place, so a cancellation never loses a request."""
        assert self._wakeup is not None
        while not batch:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            self._take_queued(batch, 0, first=True)
        size = sum(len(r.texts) for r in batch)
        deadline = batch[0].enqueued + self.max_wait_s  # computed once
        while True:
            size = self._take_queued(batch, size)
            if size >= self.max_batch_size or (self._queue and size + len(self._queue[0].texts) > self.max_batch_size):
                break
            remaining = deadline - time.monotonic()
            if self._announced <= 0 or remaining <= 0 or self._closing:
                break
            # Requests are being read right now: give them until the deadline to join.
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                self._take_queued(batch, size)
                break
        self._set_depth()

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch: list[_Request] = []
            self._current = batch
            try:
                await self._fill_batch(batch)
                started = time.monotonic()
                batch[:] = self._start(batch, started)
                if not batch:
                    continue
                for request in batch:
                    self._observe_wait(started - request.enqueued)
                predictor = self._get_predictor()
                texts = merge_texts(batch)
                prediction = await loop.run_in_executor(self._executor, predictor.predict, texts)
            except asyncio.CancelledError:
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(Overloaded("server is shutting down"))
                raise
            except Exception as exc:  # noqa: BLE001 - delivered to this batch's callers only
                log.exception("batch of %d texts failed", sum(len(r.texts) for r in batch))
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)
            else:
                if self._metrics is not None:
                    self._metrics.observe_batch(len(texts), len(batch), time.monotonic() - started)
                for request, part in zip(
                    batch, split_prediction(prediction, [len(r.texts) for r in batch]), strict=True
                ):
                    if not request.future.done():  # not answered already by its deadline
                        request.future.set_result(part)
            finally:
                self._current = []

    def _observe_wait(self, seconds: float) -> None:
        if self._metrics is not None:
            self._metrics.observe_queue_wait(seconds)

    def _set_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.set_queue_depth(self._queued_texts)


__all__ = [
    "Batcher",
    "ClientDisconnected",
    "DeadlineExceeded",
    "Overloaded",
    "Prediction",
    "merge_texts",
    "split_prediction",
]
