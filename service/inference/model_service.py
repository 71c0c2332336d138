"""ModelService: the data plane. It owns the served model, the batcher and the model process,
and does the two things a request can ask of them: predict (with a deadline and a way to tell
that the client left) and reload. It raises the domain errors of ``service.errors`` and knows
nothing of HTTP: the endpoints translate, this does the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

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
from service.inference.batching import Batcher
from service.inference.gc_tuning import freeze_new_objects, settle_garbage_collector
from service.inference.model_host import ModelHost, ModelProcessLost, load_predictor
from service.inference.predictor import Prediction, Predictor
from service.observability.drift import read_reference
from service.observability.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("service")


class ModelService:
    """One per server. ``start`` loads (unless handed a predictor) and warms; ``stop`` drains."""

    def __init__(self, settings: Settings, metrics: Metrics, model_host: ModelHost | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.model_host = model_host  # the model process (None: the model runs in a thread of this one)
        if model_host is not None:
            model_host.on_loss = lambda reason: metrics.model_process_restarts.labels(reason).inc()
        self.predictor: Predictor | None = None
        self.batcher: Batcher | None = None
        self.ready = False  # loaded and warm
        self.draining = False  # shutdown started: readiness answers 503
        self._reload_lock = asyncio.Lock()
        self._warmup: asyncio.Task[None] | None = None
        self._loading: asyncio.Task[None] | None = None
        self.load_error: str | None = None  # why a background load failed (the server then exits)
        self.on_load_failure: Callable[[], None] | None = None

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self, preloaded: Predictor | None = None, background: bool = False) -> None:
        """Load the configured version (or take ``preloaded``), start the batcher, warm up in the background.

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
        self._serve(loaded)
        self.batcher = Batcher(
            self.current_predictor,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue_size=settings.max_queue_size,
            metrics=self.metrics,
        )
        self.batcher.start()
        self._warmup = asyncio.create_task(self._warm_up(), name="warmup")
        log.info(
            "serving model %s on %s (max_batch_size=%d, max_wait_ms=%g)",
            loaded.version,
            loaded.device,
            settings.max_batch_size,
            settings.max_wait_ms,
        )

    async def stop(self) -> None:
        """Answer what is queued or running (up to the shutdown timeout), then stop the model process."""
        self.draining = True
        for task in (self._loading, self._warmup):
            if task is not None:
                task.cancel()
        if self.batcher is not None:
            await self.batcher.stop(timeout=self.settings.shutdown_timeout_s)
        if self.model_host is not None:  # after the batcher: no batch is running
            await asyncio.to_thread(self.model_host.close)
        log.info("batcher drained; shutdown complete")

    async def _warm_up(self) -> None:
        predictor = self.current_predictor()
        if self.settings.warmup:
            started = time.monotonic()
            try:
                assert self.batcher is not None
                await self.batcher.warm_up(predictor)
            except Exception:  # noqa: BLE001 - stay unready, keep the process up for inspection
                log.exception("warm-up failed; readiness stays 503")
                return
            log.info("warm-up done in %.2fs", time.monotonic() - started)
        settle_garbage_collector()
        self.ready = True

    def readiness(self) -> tuple[str, str | None]:
        """``(status, version)``: ``ready`` only when loaded, warm and not draining."""
        version = self.predictor.version if self.predictor is not None else None
        if self.draining:
            return "draining", version
        if self.predictor is None or not self.ready:
            return "starting", version
        if self.model_host is not None and self.model_host.restarting:
            return "restarting", version
        return "ready", version

    def describe(self) -> dict[str, Any]:
        if self.predictor is None:
            raise ModelUnavailable("model not loaded yet")
        return self.predictor.describe()

    def current_predictor(self) -> Predictor:
        """The served predictor; the batcher reads it once per batch, so a reload swaps between batches."""
        if self.predictor is None:
            raise RuntimeError("no model loaded")
        return self.predictor

    def _serve(self, predictor: Predictor) -> None:
        self.metrics.drift.set_model(predictor.classes, read_reference(predictor.artifact.metrics)[0])
        if self.settings.drift_metrics:
            predictor.observer = self.metrics.drift.observe
        self.predictor = predictor  # one assignment: the swap is atomic for the batcher
        self.metrics.set_model(predictor.version, str(predictor.device))

    # -- predict -----------------------------------------------------------------------
    def announce(self) -> None:
        """A predict request has started arriving: a small batch may wait for it."""
        if self.batcher is not None:
            self.batcher.announce()

    def withdraw(self) -> None:
        """An announced request was read (it is about to be submitted) or will never be."""
        if self.batcher is not None:
            self.batcher.withdraw()

    async def predict(self, texts: list[str], timeout_s: float, gone: Callable[[], bool] | None = None) -> Prediction:
        """Queue ``texts`` with their deadline and wait; every way it can fail is a domain error."""
        batcher = self.batcher
        if batcher is None:
            raise ModelUnavailable("model not loaded yet")
        try:
            return await batcher.submit(texts, timeout=timeout_s, gone=gone)
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

    # -- reload ------------------------------------------------------------------------
    async def reload(self, version: str) -> tuple[str | None, str]:
        """Load, verify and warm ``version``, then swap it in; ``(previous, new)`` versions.

        Loading and warm-up run on the model thread between live batches (torch's thread budget
        is sized for one model thread, and the model process loads between batches too). Any
        failure leaves the old model serving.
        """
        async with self._reload_lock:
            previous = self.predictor
            started = time.monotonic()
            new = None
            batcher = self.batcher
            try:
                if batcher is None:
                    raise RuntimeError("the model thread is not running")
                device = str(previous.device) if previous is not None else self.settings.device
                new = await batcher.run_on_model_thread(
                    load_predictor, self.settings.artifacts_dir, version, device, self.model_host
                )
                if self.settings.warmup:
                    await batcher.warm_up(new)
            except Exception as exc:  # noqa: BLE001 - any failure leaves the old model serving
                if new is not None and batcher is not None:  # loaded, failed to warm up: unload it
                    with contextlib.suppress(batching.Overloaded):
                        await batcher.run_on_model_thread(new.close)
                self.metrics.reloads.labels("failed").inc()
                reason = str(exc) if isinstance(exc, ArtifactError) else f"{type(exc).__name__}: {exc}"
                log.warning("reload of %r failed: %s", version, reason)
                raise ReloadFailed(f"reload failed, still serving {previous and previous.version}: {reason}") from None
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
