"""What the app holds between requests (on ``app.state.service``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from service.inference.batching import Batcher
from service.inference.model_host import ModelHost
from service.inference.predictor import Predictor
from service.observability.drift import read_reference
from service.observability.metrics import Metrics
from service.settings import Settings


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    predictor: Predictor | None = None
    batcher: Batcher | None = None
    model_host: ModelHost | None = None  # the model process (None: the model runs in a thread of this one)
    ready: bool = False  # loaded and warm
    draining: bool = False  # shutdown started: readiness answers 503
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def set_predictor(self, predictor: Predictor) -> None:
        # One attribute assignment: the batcher reads it once per batch, so the swap is atomic.
        self.metrics.drift.set_model(predictor.classes, read_reference(predictor.artifact.metrics)[0])
        if self.settings.drift_metrics:
            predictor.observer = self.metrics.drift.observe
        self.predictor = predictor
        self.metrics.set_model(predictor.version, str(predictor.device))

    def current_predictor(self) -> Predictor:
        if self.predictor is None:
            raise RuntimeError("no model loaded")
        return self.predictor
