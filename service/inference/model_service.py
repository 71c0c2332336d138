"""ModelService: the data plane. It owns the served versions (each a lane: predictor and
batcher, see service/inference/versions.py), the one model thread and the model process, and
does what a request can ask of them: route to a version, predict (with a deadline and a way
to tell that the client left), shadow, and reload, add or retire a version. It raises the
domain errors of ``service.errors`` and knows nothing of HTTP: the endpoints translate, this
does the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from contract.artifact import ArtifactError
from service.errors import (
    ClientGone,
    ModelUnavailable,
    Overloaded,
    PredictionFailed,
    PredictionTimedOut,
    ReloadFailed,
)
from service.inference import batching
from service.inference.batching import Batcher, ModelThread
from service.inference.gc_tuning import freeze_new_objects, settle_garbage_collector
from service.inference.model_host import ModelHost, ModelProcessLost, load_predictor
from service.inference.predictor import Prediction, Predictor
from service.inference.versions import Lane, VersionTable, parse_canary
from service.observability.drift import read_reference
from service.observability.metrics import Metrics
from service.observability.tracing import Tracing
from service.settings import Settings

log = logging.getLogger("service")

# The shadow's share of the model: at most one batch (of up to max_batch_size copied texts) per
# interval, started only when the model is idle (checked again every retry until it is).
SHADOW_INTERVAL_S = 0.1
SHADOW_RETRY_S = 0.005


class ModelService:
    """One per server. ``start`` loads (unless handed a predictor) and warms; ``stop`` drains."""

    def __init__(
        self, settings: Settings, metrics: Metrics, model_host: ModelHost | None = None, tracing: Tracing | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.tracing = tracing  # None: no spans, and the batchers skip their trace hook
        self.model_host = model_host  # the model process (None: the model runs in a thread of this one)
        if model_host is not None:
            model_host.on_loss = lambda reason: metrics.model_process_restarts.labels(reason).inc()
        self.table: VersionTable | None = None
        self.ready = False  # loaded and warm
        self.draining = False  # shutdown started: readiness answers 503
        self._executor: ModelThread | None = None  # the one model thread, shared by every lane
        self._reload_lock = asyncio.Lock()
        self._warmup: asyncio.Task[None] | None = None
        self._loading: asyncio.Task[None] | None = None
        self.load_error: str | None = None  # why a background load failed (the server then exits)
        self.on_load_failure: Callable[[], None] | None = None
        self._shadows: set[asyncio.Task[None]] = set()
        self._shadow_pending: list[tuple[list[str], Prediction]] = []  # copies waiting for an idle model
        self._shadow_pending_texts = 0
        self._shadow_timer: asyncio.TimerHandle | None = None
        self._shadow_next = 0.0  # monotonic time the next shadow batch may start

    @property
    def predictor(self) -> Predictor | None:
        """The default version's predictor."""
        return self.table.default.predictor if self.table is not None else None

    @property
    def batcher(self) -> Batcher | None:
        """The default version's batcher."""
        return self.table.default.batcher if self.table is not None else None

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self, preloaded: Predictor | None = None, background: bool = False) -> None:
        """Load the configured versions (the default may be ``preloaded``), start a batcher for
        each on the one model thread, set the canary and shadow, warm up in the background.

        With ``background`` the load itself runs in a task too, so the server answers liveness
        (and a 503 readiness) while a large model loads; a failure sets :attr:`load_error` and
        calls :attr:`on_load_failure`.
        """
        if background:
            self._loading = asyncio.create_task(self._load_in_background(), name="load")
            return
        await self._load(preloaded)

    async def _load_in_background(self) -> None:
        try:
            await self._load(None)
        except Exception as exc:  # noqa: BLE001 - reported, and the server stops
            self.load_error = str(exc) if isinstance(exc, ArtifactError) else f"{type(exc).__name__}: {exc}"
            log.error("cannot load the model: %s", self.load_error)
            if self.on_load_failure is not None:
                self.on_load_failure()

    async def _load(self, preloaded: Predictor | None) -> None:
        settings = self.settings
        loaded = preloaded
        if loaded is None:
            loaded = await asyncio.to_thread(
                load_predictor, settings.artifacts_dir, settings.version, settings.device, self.model_host
            )
        self._executor = ModelThread()
        self.table = VersionTable(self._lane(loaded))
        self._serve(loaded)
        try:
            await self._load_more_versions()
        except BaseException:
            await self._stop_lanes(0)
            raise
        self._warmup = asyncio.create_task(self._warm_up(), name="warmup")
        log.info(
            "serving model %s on %s (max_batch_size=%d, max_wait_ms=%g)",
            loaded.version,
            loaded.device,
            settings.max_batch_size,
            settings.max_wait_ms,
        )

    def _lane(self, predictor: Predictor) -> Lane:
        """A lane for ``predictor``, its batcher started on the model thread."""
        settings = self.settings
        batcher = Batcher(
            lambda: lane.predictor,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue_size=settings.max_queue_size,
            metrics=self.metrics,
        )
        lane = Lane(predictor, batcher)
        if self.tracing is not None:
            batcher.on_batch = self.tracing.batch_observer(str(predictor.device))
        batcher.start(self._executor)
        return lane

    async def _load_more_versions(self) -> None:
        """``--versions``, the canary and the shadow: each loaded once, whatever it is called."""
        settings, table = self.settings, self.table
        assert table is not None
        canary = parse_canary(settings.canary) if settings.canary else None
        names = [v for v in (settings.versions or "").split(",") if v]
        names += [name for name in (canary and canary[0], settings.shadow) if name]
        by_name = {settings.version: table.default}
        for name in names:
            if name in by_name:
                continue
            predictor = await self._on_model_thread(
                load_predictor, settings.artifacts_dir, name, str(table.default.predictor.device), self.model_host
            )
            lane = table.lanes.get(predictor.version)
            if lane is None:
                lane = self._lane(predictor)
                table.add(lane)
            else:  # another name for a version already served (``latest``)
                await self._on_model_thread(predictor.close)
            by_name[name] = lane
        if canary is not None:
            table.set_canary(by_name[canary[0]], canary[1])
        if settings.shadow:
            table.shadow = by_name[settings.shadow]
        if len(table.lanes) > 1:
            log.info("serving versions %s; routing %s", ", ".join(table.versions()), table.roles())

    async def _on_model_thread(self, fn: Callable[..., Any], *args: object) -> Any:
        if self._executor is None:
            raise batching.Overloaded("server is shutting down")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def stop(self) -> None:
        """Answer what is queued or running (up to the shutdown timeout), then stop the model process."""
        self.draining = True
        for task in (self._loading, self._warmup):
            if task is not None:
                task.cancel()
        if self._shadow_timer is not None:
            self._shadow_timer.cancel()
        for task in list(self._shadows):
            task.cancel()
        await self._stop_lanes(self.settings.shutdown_timeout_s)
        if self.model_host is not None:  # after the batchers: no batch is running
            await asyncio.to_thread(self.model_host.close)
        log.info("batcher drained; shutdown complete")

    async def _stop_lanes(self, timeout: float) -> None:
        """Every lane's batcher drained (up to ``timeout``), then the model thread."""
        if self.table is not None:
            await asyncio.gather(*(lane.batcher.stop(timeout=timeout) for lane in self.table.lanes.values()))
        if self._executor is not None:
            # Past the timeout a forward pass may still be running: do not block the event loop on it.
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def _warm_up(self) -> None:
        assert self.table is not None
        if self.settings.warmup:
            started = time.monotonic()
            try:
                for lane in list(self.table.lanes.values()):
                    await lane.batcher.warm_up(lane.predictor)
            except Exception:  # noqa: BLE001 - stay unready, keep the process up for inspection
                log.exception("warm-up failed; readiness stays 503")
                return
            log.info("warm-up done in %.2fs", time.monotonic() - started)
        settle_garbage_collector()
        self.ready = True

    def readiness(self) -> tuple[str, str | None]:
        """``(status, version)``: ``ready`` only when every version is loaded and warm and not draining."""
        version = self.predictor.version if self.predictor is not None else None
        if self.draining:
            return "draining", version
        if self.predictor is None or not self.ready:
            return "starting", version
        if self.model_host is not None and self.model_host.restarting:
            return "restarting", version
        return "ready", version

    def describe(self) -> dict[str, Any]:
        """The default version's metadata, every served version and the routing."""
        if self.table is None:
            raise ModelUnavailable("model not loaded yet")
        return {**self.table.default.predictor.describe(), "versions": self.table.versions(), **self.routing()}

    def routing(self) -> dict[str, Any]:
        assert self.table is not None
        return {"routing": self.table.roles()}

    def current_predictor(self) -> Predictor:
        """The default predictor; a batcher reads its lane's once per batch, so a reload swaps between batches."""
        if self.predictor is None:
            raise RuntimeError("no model loaded")
        return self.predictor

    def _serve(self, predictor: Predictor) -> None:
        """Make ``predictor`` (already in the default lane) the one the drift counters and model info describe."""
        self.metrics.drift.set_model(predictor.classes, read_reference(predictor.artifact.metrics)[0])
        if self.settings.drift_metrics:
            predictor.observer = self.metrics.drift.observe
        self.metrics.set_model(predictor.version, str(predictor.device))

    # -- routing -----------------------------------------------------------------------
    def served_versions(self) -> list[str]:
        """The versions a request may name, the default first."""
        return self.table.versions() if self.table is not None else []

    def predictor_for(self, version: str | None = None) -> Predictor:
        """The predictor serving ``version`` (None: the default one); UnknownModel if none does."""
        if self.table is None:
            raise ModelUnavailable("model not loaded yet")
        return (self.table.default if version is None else self.table.lane(version)).predictor

    def route(self, version: str | None, request_id: str) -> Lane:
        """The lane a request goes to: the version it names, else the default or the canary's share."""
        table = self.table
        if table is None:
            raise ModelUnavailable("model not loaded yet")
        return table.route(version, request_id)

    # -- predict -----------------------------------------------------------------------
    def announce(self, lane: Lane | None = None) -> None:
        """A predict request has started arriving: a small batch (of ``lane``, default the default) may wait for it."""
        batcher = lane.batcher if lane is not None else self.batcher
        if batcher is not None:
            batcher.announce()

    def withdraw(self, lane: Lane | None = None) -> None:
        """An announced request was read (it is about to be submitted) or will never be."""
        batcher = lane.batcher if lane is not None else self.batcher
        if batcher is not None:
            batcher.withdraw()

    async def predict(
        self,
        texts: list[str],
        timeout_s: float,
        gone: Callable[[], bool] | None = None,
        version: str | None = None,
        lane: Lane | None = None,
        trace: object = None,
    ) -> Prediction:
        """Queue ``texts`` with their deadline and wait; every way it can fail is a domain error.

        The request goes to ``lane`` (see :meth:`route`), else to ``version``, else the default;
        ``trace``: its span context, for the queue and batch spans."""
        if lane is None:
            lane = self.route(version, "")
        try:
            prediction = await lane.batcher.submit(texts, timeout=timeout_s, gone=gone, trace=trace)
        except batching.Overloaded as exc:
            self.metrics.rejected.labels("overloaded").inc()
            raise Overloaded(str(exc)) from None
        except batching.DeadlineExceeded as exc:
            self.metrics.rejected.labels("timeout").inc()
            where = "its batch was still running" if exc.computed else "it was still queued and was not computed"
            raise PredictionTimedOut(f"prediction did not finish within {timeout_s:g} s ({where})") from None
        except batching.ClientDisconnected:
            raise ClientGone("client disconnected before its batch started") from None
        except ModelProcessLost as exc:
            raise ModelUnavailable(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - a failed batch: tell its callers, keep serving
            raise PredictionFailed(f"prediction failed: {type(exc).__name__}: {exc}") from exc
        answers = self.metrics.answers
        answers[prediction.version] = answers.get(prediction.version, 0) + 1
        return prediction

    # -- shadow ----------------------------------------------------------------------
    def shadow(self, texts: list[str], served: Prediction) -> None:
        """Keep a copy of an answered request for the shadow version, if one is set (called after
        the answer is sent, so it never delays it).

        Lower priority than live traffic: copies wait in a buffer of at most ``max_batch_size``
        texts (a copy that does not fit is skipped and counted) and are scored as one batch, at
        most one batch per :data:`SHADOW_INTERVAL_S`, and only when every version's batcher is
        idle (nothing queued, running or arriving) so a shadow batch never waits beside a live
        one. At low traffic every request is shadowed; under load a sample is, at a bounded cost."""
        table = self.table
        lane = table.shadow if table is not None else None
        if lane is None or served.version == lane.version or self.draining:
            return
        if self._shadow_pending_texts + len(texts) > self.settings.max_batch_size:
            self.metrics.shadow_skipped.labels("busy").inc()
            return
        self._shadow_pending.append((texts, served))
        self._shadow_pending_texts += len(texts)
        if self._shadow_timer is None:
            delay = max(0.0, self._shadow_next - time.monotonic())
            self._shadow_timer = asyncio.get_running_loop().call_later(delay, self._flush_shadow)

    def shadow_backlog(self) -> int:
        """Copies waiting for the shadow or being scored by it."""
        return len(self._shadow_pending) + len(self._shadows)

    def _flush_shadow(self) -> None:
        """The buffered copies as one shadow batch, if the model is idle now (else try again shortly)."""
        self._shadow_timer = None
        table = self.table
        if not self._shadow_pending or table is None or table.shadow is None or self.draining:
            self._shadow_pending, self._shadow_pending_texts = [], 0
            return
        loop = asyncio.get_running_loop()
        if not all(lane.batcher.idle for lane in table.lanes.values()):
            self._shadow_timer = loop.call_later(SHADOW_RETRY_S, self._flush_shadow)
            return
        copies, self._shadow_pending, self._shadow_pending_texts = self._shadow_pending, [], 0
        self._shadow_next = time.monotonic() + SHADOW_INTERVAL_S
        task = loop.create_task(self._score_shadow(table.shadow, copies), name="shadow")
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _score_shadow(self, shadow: Lane, copies: list[tuple[list[str], Prediction]]) -> None:
        texts = [text for request, _ in copies for text in request]
        try:
            scored = await shadow.batcher.submit(texts, timeout=self.settings.request_timeout_s)
        except Exception as exc:  # noqa: BLE001 - a shadow never fails a request; it is counted
            self.metrics.shadow_skipped.labels("failed").inc(len(copies))
            log.debug("shadow scoring failed: %s", exc)
            return
        metrics = self.metrics
        parts = batching.split_prediction(scored, [len(request) for request, _ in copies])
        for (request, served), part in zip(copies, parts, strict=True):
            agree, differences = compare_answers(served, part)
            metrics.shadow_agreement.labels("agree").inc(agree)
            metrics.shadow_agreement.labels("disagree").inc(len(request) - agree)
            for difference in differences:
                metrics.shadow_top_difference.observe(difference)

    # -- reload, add, retire -----------------------------------------------------------
    async def reload(self, version: str) -> tuple[str | None, str]:
        """Load, verify and warm ``version``, then swap it in as the default; ``(previous, new)`` versions.

        Loading and warm-up run on the model thread between live batches (torch's thread budget
        is sized for one model thread, and the model process loads between batches too). Any
        failure leaves the old model serving.
        """
        async with self._reload_lock:
            table = self.table
            previous = self.predictor
            started = time.monotonic()
            new = None
            batcher = self.batcher
            try:
                if batcher is None or table is None:
                    raise RuntimeError("the model thread is not running")
                device = str(previous.device) if previous is not None else self.settings.device
                new = await batcher.run_on_model_thread(
                    load_predictor, self.settings.artifacts_dir, version, device, self.model_host
                )
                if new.version in table.lanes and new.version != table.default.version:
                    raise RuntimeError(f"{new.version} is already served beside the default; retire it first")
                if self.settings.warmup:
                    await batcher.warm_up(new)
            except Exception as exc:  # noqa: BLE001 - any failure leaves the old model serving
                reason = await self._load_failed(exc, new, f"reload of {version!r}")
                raise ReloadFailed(f"reload failed, still serving {previous and previous.version}: {reason}") from None
            table.default.predictor = new  # one assignment: the swap is atomic for the batcher
            table.rename(previous.version if previous is not None else new.version, table.default)
            self._serve(new)
            if previous is not None:
                # Behind every batch that read ``previous`` before the swap: it unloads from the
                # model process only after them.
                with contextlib.suppress(batching.Overloaded):
                    await batcher.run_on_model_thread(previous.close)
            freeze_new_objects()
            self.metrics.reloads.labels("ok").inc()
            log.info(
                "reloaded model %s -> %s in %.2fs",
                previous and previous.version,
                new.version,
                time.monotonic() - started,
            )
            return (previous.version if previous is not None else None), new.version

    async def _load_failed(self, exc: Exception, loaded: Predictor | None, what: str) -> str:
        """Unload what a failed reload or add loaded (behind any live batch), count and log it; the reason."""
        if loaded is not None:
            with contextlib.suppress(batching.Overloaded):
                await self._on_model_thread(loaded.close)
        self.metrics.reloads.labels("failed").inc()
        reason = str(exc) if isinstance(exc, ArtifactError) else f"{type(exc).__name__}: {exc}"
        log.warning("%s failed: %s", what, reason)
        return reason

    async def add_version(self, version: str) -> str:
        """Load, verify and warm ``version`` and serve it beside the others (by name); the version added."""
        async with self._reload_lock:
            table = self.table
            new = None
            lane = None
            try:
                if table is None:
                    raise RuntimeError("the model thread is not running")
                new = await self._on_model_thread(
                    load_predictor,
                    self.settings.artifacts_dir,
                    version,
                    str(table.default.predictor.device),
                    self.model_host,
                )
                if new.version in table.lanes:
                    raise RuntimeError(f"{new.version} is already served")
                lane = self._lane(new)
                if self.settings.warmup:
                    await lane.batcher.warm_up(new)
            except Exception as exc:  # noqa: BLE001 - any failure leaves the served versions as they were
                if lane is not None:
                    await lane.batcher.stop(timeout=0)
                reason = await self._load_failed(exc, new, f"adding {version!r}")
                raise ReloadFailed(f"adding {version!r} failed: {reason}") from None
            table.add(lane)
            freeze_new_objects()
            self.metrics.reloads.labels("ok").inc()
            log.info("added model %s; serving %s", new.version, ", ".join(table.versions()))
            return new.version

    async def retire_version(self, version: str) -> str:
        """Stop serving ``version`` (not the default, the canary or the shadow): its queued requests
        are answered first, then it is unloaded; the version retired."""
        async with self._reload_lock:
            table = self.table
            if table is None:
                raise ModelUnavailable("model not loaded yet")
            lane = table.lane(version)
            for role, holder in (("default", table.default), ("canary", table.canary), ("shadow", table.shadow)):
                if lane is holder:
                    raise ReloadFailed(f"cannot retire {version}: it is the {role} version")
            table.remove(version)
            await lane.batcher.stop(timeout=self.settings.shutdown_timeout_s)
            with contextlib.suppress(batching.Overloaded):
                await self._on_model_thread(lane.predictor.close)
            log.info("retired model %s; serving %s", version, ", ".join(table.versions()))
            return version


def compare_answers(served: Prediction, shadow: Prediction) -> tuple[int, list[float]]:
    """(texts whose labels agree, per text |served - shadow| probability of the served label).

    Classes are matched by name, so two versions with their classes in another order compare."""
    served_top = served.probabilities.argmax(axis=1)
    shadow_top = shadow.probabilities.argmax(axis=1)
    agree = sum(
        served.classes[i] == shadow.classes[j] for i, j in zip(served_top.tolist(), shadow_top.tolist(), strict=True)
    )
    position = {name: i for i, name in enumerate(shadow.classes)}
    differences = []
    rows = np.arange(len(served_top))
    served_p = served.probabilities[rows, served_top]
    for row, (label, p) in enumerate(zip(served_top.tolist(), served_p.tolist(), strict=True)):
        j = position.get(served.classes[label])
        if j is not None:
            differences.append(abs(p - float(shadow.probabilities[row, j])))
    return agree, differences
