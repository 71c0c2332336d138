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

No idle model between full batches: when, while a batch runs, the queue already holds a full
batch (``max_batch_size`` texts, or a request too large to share), that batch is formed at
once and handed to the model thread behind the running one. Waiting could not make it any
larger, and the model thread goes straight on to it instead of waiting for the event loop to
wake, deliver the last result and hand over the next batch (about a millisecond on a busy
small machine, a large share of a 256-text batch's time). Smaller batches still form when the
model becomes free, so they take in everything that arrived meanwhile.

A batch of one text on an idle model is computed by the consumer on the event loop: nothing
else was queued or arriving when it formed, nothing runs, the model thread is free, and the
predictor computes a single text in this process (on the CPU). Handing it to the model
thread and back costs two thread wake-ups, a large share of a lone request's latency, while
the loop has nothing else to do; requests that arrive meanwhile wait in their sockets for a
few tenths of a millisecond and form the next batch. Everything else about a batch (the
disconnect check, metrics, drift counters, trace, a deadline that passed) applies unchanged.

No work for requests nobody waits for: each request has a deadline (the client's
``X-Request-Timeout-Ms``, capped by the server's request timeout). A timer answers it the
moment the deadline passes: not yet started, it is never computed (counted as dropped,
reason ``deadline``); already running, its caller gets the timeout at once and the batch's
result for it is discarded. A request whose client disconnected is dropped (reason
``disconnected``) when its batch starts on the model thread; the HTTP layer hands in a cheap
probe that any thread may call.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from service.inference.predictor import Prediction, Predictor
from service.inference.threads import name_os_thread

log = logging.getLogger("service.inference.batching")

T = TypeVar("T")


class ModelThread(ThreadPoolExecutor):
    """The one model thread, and whether it has work: every batch, warm-up and load goes here.

    ``idle`` compares two counters that each have one writer (work is submitted from the event
    loop, finished on the model thread), so reading it needs no lock.
    """

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="model", initializer=name_os_thread, initargs=("hc-model",))
        self._submitted = 0
        self._finished = 0

    def submit(self, fn: Callable[..., T], /, *args: object, **kwargs: object) -> Future[T]:
        self._submitted += 1
        return super().submit(self._counted, functools.partial(fn, *args, **kwargs))

    def _counted(self, call: Callable[[], T]) -> T:
        try:
            return call()
        finally:
            self._finished += 1

    @property
    def idle(self) -> bool:
        """Nothing submitted is still waiting or running."""
        return self._submitted == self._finished


class Overloaded(Exception):
    """The queue is full (or the batcher is draining); the caller should retry later."""


class RequestTooLarge(ValueError):
    """More texts than the queue can ever hold: retrying cannot help, so this is not Overloaded."""


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


# Where a request is; a deadline timer acts on it accordingly. _FORMING -> _RUNNING (the model
# thread starts it) and _FORMING -> _EXPIRED (its deadline timer on the event loop) happen under
# the batcher's stage lock, so exactly one of them wins.
_QUEUED, _FORMING, _RUNNING, _EXPIRED = 0, 1, 2, 3


@dataclass(eq=False, slots=True)
class _Request:
    texts: Sequence[str]
    future: asyncio.Future[Prediction]
    enqueued: float = field(default_factory=time.monotonic)
    timeout_s: float | None = None
    deadline: float = math.inf
    gone: Callable[[], bool] | None = None  # True once the client disconnected
    stage: int = _QUEUED
    trace: object = None  # the request's trace context, handed to ``Batcher.on_batch``


@dataclass(slots=True)
class _Outcome:
    """What the model thread did with a batch: the requests it ran, those it skipped, and the result."""

    live: list[_Request]
    dropped: list[tuple[_Request, str]]  # (request, reason) for requests not worth computing
    started: float
    finished: float
    result: Prediction | BaseException | None = None  # None: nothing was left to compute
    computed: tuple[int, int] = (0, 0)  # (texts, requests) the model computed: the batch metrics


@dataclass(slots=True)
class _Job:
    """A batch handed to the model thread, and the future of its outcome."""

    batch: list[_Request]
    future: asyncio.Future[_Outcome]


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


def keep_rows(prediction: Prediction, batch: Sequence[_Request], live: Sequence[_Request]) -> Prediction:
    """The rows of ``live`` (a subsequence of ``batch``) in a result computed for all of ``batch``."""
    if len(live) == len(batch):
        return prediction
    keep = {id(request) for request in live}
    rows: list[int] = []
    start = 0
    for request in batch:
        if id(request) in keep:
            rows.extend(range(start, start + len(request.texts)))
        start += len(request.texts)
    return Prediction(
        prediction.probabilities[rows], [prediction.empty[i] for i in rows], prediction.version, prediction.classes
    )


class Batcher:
    """Queue + consumer task. ``get_predictor`` is read once per batch (on the model thread, as it
    starts; for a batch sent ahead, on the event loop as it is sent), so a reload swaps models
    between batches."""

    def __init__(
        self,
        get_predictor: Callable[[], Predictor],
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue_size: int,
        metrics: BatchMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._get_predictor = get_predictor
        self._clock = clock  # for enqueue times and the max_wait deadline; tests drive it by hand
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue_size = max_queue_size
        self._metrics = metrics
        self._queue: deque[_Request] = deque()
        self._queued_texts = 0
        self._announced = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._owns_executor = True
        self._model_thread: ModelThread | None = None  # set when the executor can tell it is idle
        # Tracing: called on the event loop per computed batch with (started, finished,
        # [(enqueued, trace) per request], texts, version); None when tracing is off.
        self.on_batch: Callable[[float, float, list[tuple[float, object]], int, str], None] | None = None
        self._current: list[_Request] = []  # the batch being formed
        self._running: _Job | None = None  # the batch on the model thread
        self._ahead: _Job | None = None  # a full batch handed over behind it
        self._closing = False
        self._stage_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, executor: ThreadPoolExecutor | None = None) -> None:
        """Start the consumer; ``executor``: a model thread shared with other batchers (several
        versions served), which :meth:`stop` leaves running for its owner."""
        self._wakeup = asyncio.Event()
        self._owns_executor = executor is None
        self._executor = executor or ModelThread()
        self._model_thread = self._executor if isinstance(self._executor, ModelThread) else None
        # Kept: asyncio.get_running_loop() costs a getpid() system call, once per request in submit.
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._consume(), name="batcher")

    async def stop(self, timeout: float | None = None) -> None:
        """Refuse new work, answer everything queued or running, then stop the consumer."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()  # a batch waiting for announced requests runs now
        if self._task is not None:
            deadline = None if timeout is None else time.monotonic() + timeout
            while (self._queue or self._current or self._running or self._ahead) and not self._task.done():
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
        self._model_thread = None
        if self._executor is not None and self._owns_executor:
            # Past the timeout a forward pass may still be running: do not block the event loop
            # on it (the interpreter joins the thread at exit).
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    @property
    def idle(self) -> bool:
        """Nothing queued, being formed, running, sent ahead or announced: the model is free of this batcher's work."""
        return not (self._queue or self._current or self._running or self._ahead) and self._announced <= 0

    @property
    def executor(self) -> ThreadPoolExecutor | None:
        """The model thread; other model work (warm-up) may use it to stay off concurrent batches."""
        return self._executor

    async def run_on_model_thread(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` on the model thread, between batches.

        Torch's thread budget is sized for one model thread; other model work (loading and
        warming a new version on reload) queues here instead of competing with live batches.
        """
        if self._executor is None:
            raise Overloaded("server is shutting down")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def warm_up(self, predictor: Predictor) -> None:
        """Warm ``predictor`` on the model thread one pass at a time, so live batches run in between;
        then its single texts on the event loop too, where a lone text is computed (the first
        forward pass on a thread pays torch's set-up for it, which a live request should not)."""
        batches = predictor.warmup_batches()
        for texts in batches:  # not live traffic: kept out of the drift counters
            await self.run_on_model_thread(functools.partial(predictor.predict, texts, observe=False))
        if predictor.computes_lone_text_here:
            for texts in batches:
                if len(texts) == 1:
                    predictor.predict(texts, observe=False)
                    await asyncio.sleep(0)  # live requests in between

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
        trace: object = None,
    ) -> Prediction:
        """Queue ``texts`` and wait for their result (``trace``: its trace context, see :attr:`on_batch`).

        ``timeout`` (seconds) is the request's deadline; ``gone`` tells whether its client has
        disconnected. Raises RequestTooLarge (can never fit: not worth a retry), Overloaded (full
        now: retry), DeadlineExceeded, ClientDisconnected or the model's error.
        """
        if len(texts) > self.max_queue_size:
            raise RequestTooLarge(f"{len(texts)} texts can never be queued (queue limit {self.max_queue_size})")
        loop = self._loop
        if self._closing or self._task is None or loop is None:
            raise Overloaded("server is shutting down")
        if self._queued_texts + len(texts) > self.max_queue_size:
            raise Overloaded(f"queue full ({self._queued_texts} texts waiting, limit {self.max_queue_size})")
        request = _Request(texts, loop.create_future(), self._clock(), timeout, gone=gone, trace=trace)
        timer = None
        if timeout is not None:
            request.deadline = request.enqueued + timeout
            timer = loop.call_later(timeout, self._expire, request)
        self._queue.append(request)
        self._queued_texts += len(texts)
        self._set_depth()
        assert self._wakeup is not None
        self._wakeup.set()
        self._hand_over_full_batch()
        try:
            return await request.future
        finally:
            if timer is not None:
                timer.cancel()

    def _computes_here(self, batch: list[_Request]) -> bool:
        """A lone text, with nothing running or sent ahead, the model thread free and a predictor
        that computes a single text in this process: run it on the event loop."""
        model_thread = self._model_thread
        return (
            len(batch) == 1
            and len(batch[0].texts) == 1
            and model_thread is not None
            and model_thread.idle
            and self._running is None
            and self._ahead is None
            and bool(getattr(self._get_predictor(), "computes_lone_text_here", False))
        )

    def _run_here(self, batch: list[_Request]) -> _Outcome:
        """:meth:`_run` on the event loop; a deadline that passed meanwhile still answers 504,
        as its timer would have (it could not run while the loop computed)."""
        outcome = self._run(batch)
        now = self._clock()
        for request in outcome.live:
            if request.deadline <= now and not request.future.done():
                assert request.timeout_s is not None
                request.future.set_exception(DeadlineExceeded(request.timeout_s, computed=True))
        return outcome

    def _expire(self, request: _Request) -> None:
        """The deadline timer: answer the caller now; drop the request if it has not started."""
        if request.future.done():
            return
        assert request.timeout_s is not None
        with self._stage_lock:
            stage = request.stage
            if stage == _FORMING:  # the model thread has not started it: it never will now
                request.stage = _EXPIRED
        if stage == _RUNNING:
            request.future.set_exception(DeadlineExceeded(request.timeout_s, computed=True))
            return
        if stage == _QUEUED:
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

    def _select(self, batch: list[_Request], now: float) -> tuple[list[_Request], list[tuple[_Request, str]]]:
        """Split ``batch`` into requests still worth computing (marked running) and those to drop.

        Runs on the model thread as the batch starts. It only reads the futures and the
        disconnect probes and leaves answering the dropped requests to the event loop.
        """
        live: list[_Request] = []
        dropped: list[tuple[_Request, str]] = []
        for request in batch:
            if request.future.done():  # answered by its deadline timer, or cancelled
                continue
            if request.deadline <= now:  # the timer is due but has not run yet
                dropped.append((request, "deadline"))
            elif request.gone is not None and request.gone():
                dropped.append((request, "disconnected"))
            else:
                with self._stage_lock:  # the deadline timer may be answering it right now
                    if request.stage != _FORMING:
                        continue
                    request.stage = _RUNNING
                live.append(request)
        return live, dropped

    def _run(self, batch: list[_Request], sent: Callable[[], Prediction] | None = None) -> _Outcome:
        """The model thread's part of a batch: skip what nobody waits for, compute the rest.

        The model is read here, as the batch starts, so a reload swaps models between batches.
        A batch already ``sent`` ahead to a model process counts as running since it was sent:
        its answer is collected, and the rows of requests answered meanwhile (their deadline
        passed, or the caller was cancelled) are left out.
        """
        started = self._clock()
        if sent is not None:
            try:
                result: Prediction | BaseException = sent()  # always claimed, even if nobody waits
            except Exception as exc:  # noqa: BLE001 - delivered to this batch's callers only
                result = exc
            live = [request for request in batch if not request.future.done()]
            outcome = _Outcome(live, [], started, self._clock())
            if not isinstance(result, BaseException):  # computed whole, callers who left included
                outcome.computed = (len(result.probabilities), len(batch))
            if live:
                outcome.result = result if isinstance(result, BaseException) else keep_rows(result, batch, live)
            return outcome
        live, dropped = self._select(batch, started)
        outcome = _Outcome(live, dropped, started, started)
        if live:
            try:
                outcome.result = self._get_predictor().predict(merge_texts(live))
                outcome.computed = (len(outcome.result.probabilities), len(live))
            except Exception as exc:  # noqa: BLE001 - delivered to this batch's callers only
                outcome.result = exc
            outcome.finished = self._clock()
        return outcome

    def _hand_over(self, batch: list[_Request], sent: Callable[[], Prediction] | None = None) -> _Job:
        if self._executor is None or self._loop is None:  # never the loop's default executor: one model thread only
            raise Overloaded("server is shutting down")
        return _Job(batch, self._loop.run_in_executor(self._executor, self._run, batch, sent))

    def _hand_over_full_batch(self) -> None:
        """While a batch runs, hand the next one over too if it is already as large as it can get."""
        if self._running is None or self._ahead is not None or self._queued_texts < self.max_batch_size:
            return
        batch: list[_Request] = []
        self._take_queued(batch, 0, first=True)
        self._set_depth()
        if batch:
            # Only a batch of max_batch_size texts or more goes ahead to a model process: a
            # smaller one (the next request did not fit) keeps the check at its turn, so requests
            # queued behind large ones that expire or disconnect are still never computed.
            size = sum(len(r.texts) for r in batch)
            sent = self._send_ahead(batch) if size >= self.max_batch_size else None
            if sent is not None:  # computing from now on: a deadline that passes gets "still running"
                for request in batch:
                    request.stage = _RUNNING
            self._ahead = self._hand_over(batch, sent)

    def _send_ahead(self, batch: list[_Request]) -> Callable[[], Prediction] | None:
        """Start the full batch in a model process at once (see ``Predictor.send_ahead``), so it
        computes right behind the running one; the model thread collects it in turn."""
        try:
            return self._get_predictor().send_ahead(merge_texts(batch))
        except Exception:  # noqa: BLE001 - not sent: the model thread computes it as usual
            log.debug("batch not sent ahead", exc_info=True)
            return None

    def _deliver(self, outcome: _Outcome) -> None:
        """Answer every request of a finished batch (on the event loop)."""
        for request, reason in outcome.dropped:
            if request.future.done():  # the deadline timer got there first
                continue
            if reason == "deadline":
                assert request.timeout_s is not None
                self._drop(request, reason, DeadlineExceeded(request.timeout_s, computed=False))
            else:
                self._drop(request, reason, ClientDisconnected("client disconnected before its batch started"))
        if self._metrics is not None and outcome.computed[0]:  # what the model computed, as drift counts it
            texts, requests = outcome.computed
            self._metrics.observe_batch(texts, requests, outcome.finished - outcome.started)
        result = outcome.result
        if result is None:
            return
        for request in outcome.live:
            self._observe_wait(outcome.started - request.enqueued)
        if isinstance(result, BaseException):
            log.error(
                "batch of %d texts failed",
                sum(len(r.texts) for r in outcome.live),
                exc_info=(type(result), result, result.__traceback__),
            )
            for request in outcome.live:
                if not request.future.done():
                    request.future.set_exception(result)
            return
        if self.on_batch is not None:
            traced = [(request.enqueued, request.trace) for request in outcome.live]
            self.on_batch(outcome.started, outcome.finished, traced, len(result.probabilities), result.version)
        parts = split_prediction(result, [len(r.texts) for r in outcome.live])
        for request, part in zip(outcome.live, parts, strict=True):
            if not request.future.done():  # not answered already by its deadline
                request.future.set_result(part)

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
            remaining = deadline - self._clock()
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
        while True:
            job, self._ahead = self._ahead, None
            try:
                if job is None:
                    batch: list[_Request] = []
                    self._current = batch
                    await self._fill_batch(batch)
                    if self._computes_here(batch):
                        self._current = []
                        self._deliver(self._run_here(batch))
                        continue
                    job = self._hand_over(batch)
                    self._current = []
                self._running = job
                self._hand_over_full_batch()
                outcome = await job.future
            except asyncio.CancelledError:
                for request in [*self._current, *(r for j in (job, self._ahead) if j for r in j.batch)]:
                    if not request.future.done():
                        request.future.set_exception(Overloaded("server is shutting down"))
                raise
            except Exception as exc:  # noqa: BLE001 - fail this batch's callers, keep serving the queue
                failed = [*self._current, *(job.batch if job is not None else [])]
                log.exception("batch of %d texts failed", sum(len(r.texts) for r in failed))
                for request in failed:
                    if not request.future.done():
                        request.future.set_exception(exc)
                continue
            finally:
                self._current = []
                self._running = None
            self._deliver(outcome)

    def _observe_wait(self, seconds: float) -> None:
        if self._metrics is not None:
            self._metrics.observe_queue_wait(seconds)

    def _set_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.set_queue_depth(self._queued_texts)


__all__ = [
    "Batcher",
    "ClientDisconnected",
    "ModelThread",
    "DeadlineExceeded",
    "Overloaded",
    "Prediction",
    "RequestTooLarge",
    "merge_texts",
    "split_prediction",
]
