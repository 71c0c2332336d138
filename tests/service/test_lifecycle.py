"""Startup, reload and limits through the real app (in-process HTTP), with the model held at will.

``HoldingPredictor`` is a real Predictor whose forward pass waits on a gate when a text contains
``hold``: the tests decide exactly when a batch or a warm-up pass finishes, so nothing here
depends on timing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from contract.artifact import resolve_version
from service.api.app import create_app
from service.inference.model_host import ModelHost, ModelProcessLost, ProcessPredictor
from service.inference.predictor import Prediction, Predictor
from tests.service.conftest import make_artifact, make_settings

V1 = "20260101T000000Z-aaaaaa"
V2 = "20260102T000000Z-bbbbbb"
TOKEN = "lifecycle-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NEVER = 10.0


class Holding(Predictor):
    """A real predictor; a batch with a text containing ``hold`` waits until ``gate`` opens."""

    gate: threading.Event
    held: threading.Semaphore

    @property
    def computes_lone_text_here(self) -> bool:
        return False  # a held batch must hold the model thread, never the event loop

    def predict(self, texts: Sequence[str], *, observe: bool = True) -> Prediction:
        if any("hold" in t for t in texts):
            self.held.release()
            assert self.gate.wait(NEVER), "the test never opened the gate"
        return super().predict(texts, observe=observe)

    def wait_held(self) -> None:
        assert self.held.acquire(timeout=NEVER), "no batch reached the model"


class HoldingPredictor(Holding):
    """In this process."""


def holding(folder: Path) -> HoldingPredictor:
    base = Predictor.load(folder, version=V1, device="cpu")
    predictor = HoldingPredictor(base.artifact, base.device)
    predictor.gate, predictor.held = threading.Event(), threading.Semaphore(0)
    return predictor


@pytest.fixture()
def two_versions(tmp_path: Path) -> Path:
    make_artifact(tmp_path, seed=0, version=V1)
    make_artifact(tmp_path, seed=7, version=V2)
    return tmp_path


def in_thread(call: object) -> tuple[threading.Thread, list[httpx.Response]]:
    out: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: out.append(call()), daemon=True)  # type: ignore[operator]
    thread.start()
    return thread, out


def wait_until(predicate: object, what: str) -> None:
    deadline = time.monotonic() + NEVER
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_readiness_is_503_during_warm_up(two_versions: Path) -> None:
    predictor = holding(two_versions)
    predictor.warmup_batches = lambda rounds=2: [["hold the warm-up"], ["Stocks rally"]]  # type: ignore[method-assign]
    settings = make_settings(two_versions, version=V1, warmup=True)
    with TestClient(create_app(settings, predictor=predictor)) as client:
        predictor.wait_held()  # warm-up is running on the model thread
        ready = client.get("/health/ready")
        assert (ready.status_code, ready.json()) == (503, {"status": "starting", "model_version": V1})
        assert client.get("/health/live").status_code == 200
        predictor.gate.set()
        wait_until(lambda: client.get("/health/ready").status_code == 200, "readiness after warm-up")
        assert client.get("/health/ready").json() == {"status": "ready", "model_version": V1}


def test_running_batch_finishes_on_the_old_model_during_a_reload(
    two_versions: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a model process (``--no-model-process``) the new version loads on the model thread."""
    expected_old = Predictor.load(two_versions, version=V1, device="cpu").predict(["hold: Stocks rally"])
    threads: list[tuple[str, str]] = []  # (what, thread name) for every load and forward pass
    load, predict = Predictor.load, Predictor.predict

    def recording_load(*args: object, **kwargs: object) -> Predictor:
        threads.append(("load", threading.current_thread().name))
        return load(*args, **kwargs)  # type: ignore[arg-type]

    def recording_predict(self: Predictor, texts: Sequence[str], *, observe: bool = True) -> Prediction:
        threads.append(("predict", threading.current_thread().name))
        return predict(self, texts, observe=observe)

    monkeypatch.setattr(Predictor, "load", staticmethod(recording_load))
    monkeypatch.setattr(Predictor, "predict", recording_predict)
    # A lone text on an idle model runs on the event loop; here every forward pass is recorded.
    monkeypatch.setattr(Predictor, "computes_lone_text_here", property(lambda self: False))
    predictor = holding(two_versions)
    threads.clear()
    settings = make_settings(two_versions, version=V1, warmup=True, admin_token=TOKEN, model_process=False)
    with TestClient(create_app(settings, predictor=predictor)) as client:
        wait_until(lambda: client.get("/health/ready").status_code == 200, "startup")
        running, answer = in_thread(lambda: client.post("/predict", json={"text": "hold: Stocks rally"}))
        predictor.wait_held()  # the batch is on the model thread, on the old model
        reloading, reloaded = in_thread(lambda: client.post("/admin/reload", headers=AUTH, json={"version": V2}))
        # The reload's load waits for the model thread: it cannot finish while the batch is held.
        reloading.join(0.5)
        assert reloading.is_alive() and not reloaded, "reload finished while a batch held the model thread"
        predictor.gate.set()
        running.join(NEVER)
        reloading.join(NEVER)
        [old], [swap] = answer, reloaded
        assert old.status_code == 200 and old.json()["model_version"] == V1
        got = [old.json()["predictions"][0]["probabilities"][c] for c in predictor.classes]
        np.testing.assert_allclose(got, expected_old.probabilities[0], atol=1e-6)  # computed by the old weights
        assert swap.status_code == 200
        assert swap.json() == {"previous_version": V1, "model_version": V2, "versions": [V2]}
        after = client.post("/predict", json={"text": "Stocks rally"}).json()
        assert after["model_version"] == V2
    # Loading and warming the new version ran on the one model thread, like every batch.
    assert ("load", "model_0") in threads
    assert {name for _, name in threads} == {"model_0"}, threads


class HoldingProcessPredictor(Holding, ProcessPredictor):
    """With a model process: a batch with a ``hold`` text waits before it is sent."""


def test_with_a_model_process_a_reload_loads_into_it_between_batches_and_unloads_the_old_version_after(
    two_versions: Path,
) -> None:
    host = ModelHost(threads=1)
    predictor = HoldingProcessPredictor(resolve_version(two_versions, V1), torch.device("cpu"), host)
    predictor.gate, predictor.held = threading.Event(), threading.Semaphore(0)
    pid = host.pid
    settings = make_settings(two_versions, version=V1, admin_token=TOKEN)
    assert settings.model_process  # the default
    two = {"texts": ["hold: Stocks rally", "Oil"]}  # two texts: computed in the model process
    with TestClient(create_app(settings, predictor=predictor, model_host=host)) as client:
        state = client.app.model  # type: ignore[attr-defined]
        running, answer = in_thread(lambda: client.post("/predict", json=two))
        predictor.wait_held()
        reloading, reloaded = in_thread(lambda: client.post("/admin/reload", headers=AUTH, json={"version": V2}))
        reloading.join(0.5)  # the load waits for the model thread, as without a model process
        assert reloading.is_alive() and not reloaded, "reload finished while a batch held the model thread"
        predictor.gate.set()
        running.join(NEVER)
        reloading.join(NEVER)
        [old], [swap] = answer, reloaded
        assert old.status_code == 200 and old.json()["model_version"] == V1, old.text
        assert swap.status_code == 200
        assert swap.json() == {"previous_version": V1, "model_version": V2, "versions": [V2]}
        after = client.post("/predict", json={"texts": ["Stocks rally", "Oil"]}).json()
        assert after["model_version"] == V2
        assert state.predictor.pid == pid, "the reload started a new model process"
        with pytest.raises(ModelProcessLost, match="no longer served"):  # V1 was unloaded
            predictor.predict(["Stocks rally", "Oil"])
    assert pid is not None and not Path(f"/proc/{pid}").exists(), "shutdown left the model process running"


def test_largest_allowed_request_succeeds_on_an_idle_server(artifacts_dir: Path) -> None:
    settings = make_settings(artifacts_dir, max_queue_size=4, max_texts_per_request=4)
    with TestClient(create_app(settings)) as client:
        r = client.post("/predict", json={"texts": ["Oil", "Stocks rally", "Federer wins", "Mars"]})
        assert r.status_code == 200, r.text
        too_many = client.post("/predict", json={"texts": ["Oil"] * 5})
        assert too_many.status_code == 422 and "too many texts" in too_many.json()["error"]["message"]


@pytest.mark.parametrize("preloaded", [False, True], ids=["loaded-at-startup", "preloaded"])
def test_the_old_model_is_freed_after_a_reload_without_a_full_gc_pass(two_versions: Path, preloaded: bool) -> None:
    """A reload only freezes the new objects (a full collection would stall the event loop):
    the old model must then go by reference counting alone (``python -m service`` preloads it)."""
    import gc
    import weakref

    settings = make_settings(two_versions, version=V1, admin_token=TOKEN)
    app = create_app(settings, Predictor.load(two_versions, V1, "cpu") if preloaded else None)
    with TestClient(app) as client:
        assert client.post("/predict", json={"text": "Stocks rally"}).status_code == 200
        old = weakref.ref(client.app.model.predictor)  # type: ignore[attr-defined]
        gc.disable()  # only reference counting may free it
        try:
            assert client.post("/admin/reload", headers=AUTH, json={"version": V2}).status_code == 200
            assert client.post("/predict", json={"text": "Stocks rally"}).json()["model_version"] == V2
            assert old() is None, "the old model is still referenced after the reload"
        finally:
            gc.enable()


def test_a_reload_runs_no_full_gc_pass(two_versions: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full collection runs on the event loop and stalls every live request (100-300 ms per reload)."""
    import gc

    settings = make_settings(two_versions, version=V1, admin_token=TOKEN)
    with TestClient(create_app(settings)) as client:
        wait_until(lambda: client.get("/health/ready").status_code == 200, "startup")
        collections: list[tuple[object, ...]] = []
        real_collect = gc.collect
        monkeypatch.setattr(gc, "collect", lambda *args: collections.append(args) or real_collect(*args))
        assert client.post("/admin/reload", headers=AUTH, json={"version": V2}).status_code == 200
        assert collections == [], f"gc.collect{collections[0]} ran during the reload"
