"""What the deployment manifests must agree with, read from the code and the image definitions.

Every import of the service's modules is in :func:`app_facts`, so a reorganised service package
needs only this function repointed. The facts come from behaviour where it can be observed: a
real app instance (the committed default model, in process) answers the probe paths, says
which path turns 503 while draining, and exposes the metric names on /metrics.
"""

from __future__ import annotations

import inspect
import os
import re
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[2]
ENV_PREFIX = "HC_"


@dataclass(frozen=True)
class AppFacts:
    ready_path: str
    live_path: str
    metrics_path: str
    statuses: Mapping[str, int]
    exported_metrics: frozenset[str]
    idle_grace_s: float
    image_port: int
    image_uid: int
    settings_factory: Callable[..., Any]

    def status_of(self, path: str) -> int:
        """The status a ready app answered on ``path`` (404 for a path nobody asked about)."""
        return self.statuses.get(path, 404)

    def settings_from_env(self, env: Mapping[str, str]) -> Any:
        """The server's validated settings for a container with ``env`` (``HC_*`` only; the rest is ignored).

        The test process's own ``HC_*`` variables are hidden, so only the manifest counts.
        """
        values = {k.removeprefix(ENV_PREFIX).lower(): v for k, v in env.items() if k.startswith(ENV_PREFIX)}
        clean = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        with mock.patch.dict(os.environ, clean, clear=True):
            return self.settings_factory(**values)


def image_facts() -> tuple[int, int]:
    """(port, uid) of the API image, from the Dockerfile; the training image must use the same uid."""
    api = (ROOT / "Dockerfile").read_text()
    train = (ROOT / "training" / "Dockerfile").read_text()
    uids = {int(m) for text in (api, train) for m in re.findall(r"useradd[^\n]*--uid (\d+)", text)}
    assert len(uids) == 1, f"the two images disagree on the uid: {uids}"
    ports = {int(p) for p in re.findall(r"HC_PORT=(\d+)", api)} | {int(p) for p in re.findall(r"EXPOSE (\d+)", api)}
    assert len(ports) == 1, f"Dockerfile: HC_PORT and EXPOSE disagree: {ports}"
    return ports.pop(), uids.pop()


def app_facts(artifacts_dir: Path = ROOT / "artifacts") -> AppFacts:
    from prometheus_client.parser import text_string_to_metric_families

    from service.api.app import create_app
    from service.http.server import DrainingServer
    from service.settings import Settings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    settings = Settings(artifacts_dir=artifacts_dir, model_process=False, warmup=False, access_log=False)
    app = create_app(settings)
    candidates = ("/health/ready", "/health/live", "/metrics", "/model")
    with TestClient(app) as client:
        deadline = time.monotonic() + 30
        while client.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "the app never turned ready"
            time.sleep(0.05)
        response = client.post("/predict", json={"texts": ["Stocks rally as oil prices fall", "Federer wins"]})
        assert response.status_code == 200, response.text
        statuses = {path: client.get(path).status_code for path in candidates}
        exposition = client.get("/metrics").text
        app.model.draining = True  # what SIGTERM sets first
        draining = {path: client.get(path).status_code for path in candidates}
        app.model.draining = False
    ready = [p for p in candidates if statuses[p] == 200 and draining[p] == 503]
    live = [p for p in candidates if p.startswith("/health") and statuses[p] == 200 and draining[p] == 200]
    assert len(ready) == 1 and len(live) == 1, (statuses, draining)
    names = frozenset(s.name for family in text_string_to_metric_families(exposition) for s in family.samples)
    idle_grace = inspect.signature(DrainingServer.__init__).parameters["idle_grace_s"].default
    port, uid = image_facts()
    return AppFacts(
        ready_path=ready[0],
        live_path=live[0],
        metrics_path="/metrics",
        statuses=statuses,
        exported_metrics=names,
        idle_grace_s=float(idle_grace),
        image_port=port,
        image_uid=uid,
        settings_factory=Settings,
    )
