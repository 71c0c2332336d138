"""The model process: same answers as the in-process predictor, and a lost child costs one batch."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from contract.artifact import ArtifactError
from contract.drift import InputCounts
from service.inference.model_host import ModelHost, ModelProcessLost, ProcessPredictor
from service.inference.predictor import Predictor
from tests.service.conftest import TITLES, distinct_texts
from tests.service.live_server import launch_server
from tests.tolerance import CPU_ATOL, SERVED_ATOL

NEVER = 30.0


def gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + NEVER
    while not gone(pid):  # reaped by the parent's next join, or a zombie until then
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] if not gone(pid) else "X"
        if status == "Z":
            return
        assert time.monotonic() < deadline, f"process {pid} did not die"
        time.sleep(0.01)


@pytest.fixture()
def host() -> Iterator[ModelHost]:
    with ModelHost(threads=1) as started:
        yield started


@pytest.fixture()
def remote(host: ModelHost, artifacts_dir: Path) -> ProcessPredictor:
    return ProcessPredictor.start(host, artifacts_dir, device="cpu")


def test_answers_match_the_in_process_predictor(remote: ProcessPredictor, artifacts_dir: Path) -> None:
    local = Predictor.load(artifacts_dir, device="cpu")
    texts = [*TITLES, "!!! ???", *distinct_texts(60)]
    seen: list[tuple[InputCounts, np.ndarray]] = []
    expected_seen: list[tuple[InputCounts, np.ndarray]] = []
    remote.observer = lambda counts, probs, classes: seen.append((counts, probs))
    local.observer = lambda counts, probs, classes: expected_seen.append((counts, probs))
    got, expected = remote.predict(texts), local.predict(texts)
    assert (got.version, got.classes, got.empty) == (expected.version, expected.classes, expected.empty)
    assert any(got.empty) and not all(got.empty)  # "!!! ???" has no tokens
    np.testing.assert_allclose(got.probabilities, expected.probabilities, atol=CPU_ATOL)
    # The drift counters see the same batch, counted in the child.
    assert [c for c, _ in seen] == [c for c, _ in expected_seen]
    np.testing.assert_allclose(seen[0][1], expected_seen[0][1], atol=CPU_ATOL)
    assert remote.predict(texts, observe=False) is not None and len(seen) == 1
    assert remote.device == torch.device("cpu") and remote.describe()["device"] == "cpu"


def test_a_killed_child_fails_one_batch_and_is_started_again_with_every_loaded_version(
    host: ModelHost, remote: ProcessPredictor, artifacts_dir: Path
) -> None:
    other = ProcessPredictor.start(host, artifacts_dir, device="cpu")  # a second version (as during a reload)
    expected = remote.predict(["Stocks rally", "Oil prices fall"]).probabilities
    first = remote.pid
    assert first is not None and first != os.getpid() and other.pid == first  # one process for both
    losses: list[str] = []
    host.on_loss = losses.append
    kill(first)
    with pytest.raises(ModelProcessLost, match="exited .* being replaced"):
        remote.predict(["Stocks rally", "Oil prices fall"])
    assert losses == ["exited"] and gone(first)  # counted, and reaped rather than left a zombie
    # A lone text on the CPU never needs the child; the replacement starts on its own thread.
    assert remote.predict(["Stocks rally"]).probabilities.shape == (1, 4)
    assert host.wait_until_serving(NEVER)
    again = remote.predict(["Stocks rally", "Oil prices fall"]).probabilities
    np.testing.assert_allclose(again, expected, atol=CPU_ATOL)
    assert remote.pid not in (None, first)
    assert other.predict(["Stocks rally", "Oil prices fall"]).probabilities.shape == (2, 4)  # reloaded too


def test_a_stopped_child_is_replaced_by_the_watchdog_and_batches_fail_fast_meanwhile(artifacts_dir: Path) -> None:
    with ModelHost(threads=1, stall_s=0.5) as host:
        remote = ProcessPredictor.start(host, artifacts_dir, device="cpu")
        texts = ["Stocks rally", "Oil prices fall"]
        expected = remote.predict(texts).probabilities
        stopped = remote.pid
        assert stopped is not None
        losses: list[str] = []
        host.on_loss = losses.append
        os.kill(stopped, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(ModelProcessLost, match="stopped answering"):
            remote.predict(texts)
        assert time.monotonic() - started < 5, "the watchdog took too long"
        assert losses == ["stalled"]
        if host.restarting:  # until the new child serves, a batch fails at once instead of waiting for it
            fast = time.monotonic()
            with pytest.raises(ModelProcessLost, match="being replaced"):
                remote.predict(texts)
            assert time.monotonic() - fast < 0.5
        assert host.wait_until_serving(NEVER)
        np.testing.assert_allclose(remote.predict(texts).probabilities, expected, atol=CPU_ATOL)
        assert remote.pid not in (None, stopped) and gone(stopped)


def test_a_version_whose_folder_is_gone_is_restored_from_the_bytes_the_host_kept(
    artifacts_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from contract.artifact import resolve_version

    folder = tmp_path / resolve_version(artifacts_dir).name
    shutil.copytree(resolve_version(artifacts_dir), folder)
    with ModelHost(threads=1) as host:
        remote = ProcessPredictor(folder, torch.device("cpu"), host)
        texts = ["Stocks rally", "Oil prices fall"]
        expected = remote.predict(texts).probabilities
        shutil.rmtree(folder)
        first = remote.pid
        assert first is not None
        kill(first)
        with pytest.raises(ModelProcessLost):
            remote.predict(texts)
        assert host.wait_until_serving(NEVER)
        np.testing.assert_allclose(remote.predict(texts).probabilities, expected, atol=CPU_ATOL)
        assert remote.pid not in (None, first)


def test_a_changed_file_is_refused_before_it_reaches_the_model_process(artifacts_dir: Path, tmp_path: Path) -> None:
    import shutil

    from contract.artifact import resolve_version
    from service.inference.model_host import read_artifact_files

    folder = tmp_path / resolve_version(artifacts_dir).name
    shutil.copytree(resolve_version(artifacts_dir), folder)
    files = read_artifact_files(folder)
    assert "manifest.json" in files and "model.pt" in files
    (folder / "labels.json").write_text("[]")
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        read_artifact_files(folder)


def test_the_child_outlives_a_group_sigterm_until_its_parent_lets_it_go(remote: ProcessPredictor) -> None:
    """systemd stops a service by signalling every process in it: the parent must drain first."""
    pid = remote.pid
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    os.kill(pid, signal.SIGINT)
    assert remote.predict(["Stocks rally", "Oil prices fall"]).probabilities.shape == (2, 4)
    assert remote.pid == pid


def test_a_closed_version_refuses_work(host: ModelHost, remote: ProcessPredictor) -> None:
    remote.close()
    remote.close()
    for texts in (["Stocks rally", "Oil"], ["Stocks rally"]):
        with pytest.raises(ModelProcessLost, match="no longer served"):
            remote.predict(texts)
    assert host.pid is not None  # the process stays for the versions still served


def test_closing_the_host_stops_the_process_and_refuses_more_work(artifacts_dir: Path) -> None:
    host = ModelHost(threads=1)
    predictor = ProcessPredictor.start(host, artifacts_dir, device="cpu")
    pid = predictor.pid
    assert pid is not None and not gone(pid)
    host.close()
    host.close()
    assert gone(pid)
    with pytest.raises(ModelProcessLost, match="shutting down"):  # not silently started again
        predictor.predict(["Stocks rally", "Oil"])
    assert host.pid is None


def test_a_host_that_is_garbage_collected_stops_its_process(artifacts_dir: Path) -> None:
    host = ModelHost(threads=1)
    predictor = ProcessPredictor.start(host, artifacts_dir, device="cpu")
    pid = predictor.pid
    assert pid is not None
    del predictor, host  # reference counting alone
    assert gone(pid)


def test_a_version_the_child_cannot_load_names_the_folder_and_the_cause(
    host: ModelHost, remote: ProcessPredictor, artifacts_dir: Path, tmp_path: Path
) -> None:
    import hashlib
    import json
    import shutil

    from contract.artifact import resolve_version

    with pytest.raises(ArtifactError, match=f"{tmp_path}: cannot read the artifact's files"):
        host.load(str(tmp_path), "cpu")  # nothing there: refused before the child sees it
    folder = tmp_path / resolve_version(artifacts_dir).name
    shutil.copytree(resolve_version(artifacts_dir), folder)
    (folder / "model.pt").write_bytes(b"not a checkpoint")  # consistent checksums, unusable weights
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["model.pt"] = hashlib.sha256(b"not a checkpoint").hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=f"could not load {folder}: .*cannot load weights"):
        host.load(str(folder), "cpu")
    assert host.pid is not None and not host.restarting  # the process itself keeps serving


def test_a_server_whose_model_process_is_killed_answers_503_then_recovers(artifacts_dir: Path) -> None:
    """Over HTTP: the batch that lost the child gets 503 with Retry-After, never a 500 or a hang."""
    with launch_server(artifacts_dir, "--torch-threads", "1") as server:
        body = {"texts": ["Stocks rally", "Federer wins the final"]}
        assert httpx.post(f"{server.url}/predict", json=body).status_code == 200
        tasks = Path(f"/proc/{server.process.pid}/task").iterdir()  # whichever thread started it
        children = [c for task in tasks for c in (task / "children").read_text().split()]
        assert len(children) == 1, children  # exactly one model process
        kill(int(children[0]))
        lost = httpx.post(f"{server.url}/predict", json=body, timeout=NEVER)
        assert lost.status_code == 503, lost.text
        assert "model process exited" in lost.json()["error"]["message"] and lost.headers["retry-after"]
        assert httpx.get(f"{server.url}/health/ready").json()["status"] == "restarting"
        deadline = time.monotonic() + NEVER
        while httpx.get(f"{server.url}/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "not ready again"
            time.sleep(0.05)
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'hc_model_process_restarts_total{reason="exited"} 1.0' in metrics
        recovered = httpx.post(f"{server.url}/predict", json=body, timeout=NEVER)
        assert recovered.status_code == 200 and len(recovered.json()["predictions"]) == 2
        assert httpx.get(f"{server.url}/health/ready").status_code == 200
        assert server.process.poll() is None


def test_batches_sent_ahead_are_answered_by_their_own_tickets_in_any_order(remote: ProcessPredictor) -> None:
    one, two = distinct_texts(40)[:20], distinct_texts(40)[20:]
    first, second = remote.send_ahead(one), remote.send_ahead(two)
    assert first is not None and second is not None
    late, early = second(), first()  # claimed out of order: each still gets its own answer
    np.testing.assert_allclose(early.probabilities, remote.predict(one).probabilities, atol=CPU_ATOL)
    np.testing.assert_allclose(late.probabilities, remote.predict(two).probabilities, atol=CPU_ATOL)


def test_what_is_not_sent_ahead(host: ModelHost, remote: ProcessPredictor) -> None:
    assert remote.send_ahead(["Stocks rally"]) is None  # a lone CPU text runs in this process
    assert remote.send_ahead(["x" * 40_000, "y" * 40_000]) is None  # could block the event loop on a full socket
    pid = remote.pid
    assert pid is not None
    kill(pid)
    with pytest.raises(ModelProcessLost):
        remote.predict(["Stocks rally", "Oil"])
    assert remote.send_ahead(["Stocks rally", "Oil"]) is None  # never starts a model process on the event loop
    assert host.pid is None


def test_a_lost_model_process_fails_every_batch_in_flight(remote: ProcessPredictor) -> None:
    pid = remote.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # nothing sent from here on can be answered
    sent = [remote.send_ahead(["Stocks rally", f"Oil {i}"]) for i in range(3)]
    assert all(s is not None for s in sent)
    kill(pid)
    for collect in sent:
        with pytest.raises(ModelProcessLost):
            collect()  # type: ignore[misc]
    assert remote.host.wait_until_serving(NEVER)
    assert remote.predict(["Stocks rally", "Oil"]).probabilities.shape == (2, 4)


def test_large_requests_from_concurrent_clients_each_get_their_own_answers(artifacts_dir: Path) -> None:
    """Requests over max_batch_size are full batches: sent ahead to the model process while
    another runs. A mixed-up ticket would hand one client another's rows."""
    import asyncio

    texts = distinct_texts(240)
    groups = [texts[i : i + 60] for i in range(0, 240, 60)]  # each over --max-batch-size 32
    local = Predictor.load(artifacts_dir, device="cpu")
    expected = [local.predict(g).probabilities for g in groups]

    async def client(url: str, index: int) -> list[np.ndarray]:
        got = []
        async with httpx.AsyncClient(base_url=url, timeout=NEVER) as http:
            for _ in range(5):
                r = await http.post("/predict", json={"texts": groups[index]})
                assert r.status_code == 200, r.text
                got.append(np.array([[p["probabilities"][c] for c in local.classes] for p in r.json()["predictions"]]))
        return got

    async def main(url: str) -> list[list[np.ndarray]]:
        return list(await asyncio.gather(*(client(url, i) for i in range(len(groups)))))

    with launch_server(artifacts_dir, "--torch-threads", "1", "--max-batch-size", "32") as server:
        answers = asyncio.run(main(server.url))
        metrics = httpx.get(f"{server.url}/metrics").text
    for index, rounds in enumerate(answers):
        for got in rounds:
            np.testing.assert_allclose(got, expected[index], atol=SERVED_ATOL)
    assert "hc_batch_size_requests_count" in metrics


def test_a_batch_sent_ahead_is_counted_by_the_drift_counters(remote: ProcessPredictor) -> None:
    """A sent batch is computed in the child with counting on, and its counts reach the observer."""
    seen: list[InputCounts] = []
    remote.observer = lambda counts, probs, classes: seen.append(counts)
    texts = ["Stocks rally", "Oil prices fall", "!!! ???"]
    collect = remote.send_ahead(texts)
    assert collect is not None
    collect()
    assert len(seen) == 1 and seen[0].texts == 3 and seen[0].empty == 1, seen
