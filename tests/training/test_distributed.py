"""torchrun on loopback (gloo): two processes on one node, and two nodes of one process each.

One node: one artifact written by rank 0, identical weights and identical early-stopping /
learning-rate decisions on every rank. Two nodes: two ``torchrun --nnodes 2`` launches meeting at
a c10d rendezvous train one model, only rank 0's node writes the artifact, and its test metrics
match a one-process run with the same global batch within seed noise.

Every socket stays on 127.0.0.1: the rendezvous endpoint, the workers' MASTER_ADDR
(``--local-addr``) and gloo's own connections (``GLOO_SOCKET_IFNAME=lo``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import torch

from contract.artifact import list_versions, load_artifact
from tests.service.live_server import free_port
from tests.training.conftest import small_csv

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK_ENV = {"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
# Spread of test macro F1 over seeds 1-3 for the two-node run's configuration on its 3,000 rows
# (0.67-0.73): a two-node run that differs from the one-process run by more is not seed noise.
SEED_NOISE_F1 = 0.06


def loopback_torchrun(nnodes: int, nproc: int, port: int, run_id: str) -> list[str]:
    """``torchrun`` meeting at a c10d rendezvous on 127.0.0.1, workers told to use 127.0.0.1 too."""
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc-per-node={nproc}",
        "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id={run_id}", "--local-addr=127.0.0.1",
    ]  # fmt: skip


def test_torchrun_two_processes_agree_and_write_one_artifact(news_csv, nltk_dir, tmp_path):
    data = tmp_path / "small.csv"
    small_csv(news_csv, data, 400)
    artifacts, out = tmp_path / "artifacts", tmp_path / "ranks"
    out.mkdir()
    command = [
        *loopback_torchrun(1, 2, free_port(), uuid.uuid4().hex),
        str(ROOT / "tests" / "training" / "ddp_worker.py"), str(data), str(artifacts), str(nltk_dir), str(out),
    ]  # fmt: skip
    env = {**os.environ, **LOOPBACK_ENV, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]

    versions = list_versions(artifacts)
    assert len(versions) == 1 and result.stdout.count("artifact written to") == 1
    assert not [p for p in artifacts.iterdir() if p.name.startswith(".")]
    loaded = load_artifact(artifacts / versions[0])
    assert loaded.metrics["timing"]["world_size"] == 2

    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    # Rank 1 had no NLTK data: it received rank 0's list instead of failing.
    assert ranks[0]["stopwords"] == ranks[1]["stopwords"] == loaded.preprocessing.stopwords
    assert "the" in ranks[1]["stopwords"]
    # Gradients were all-reduced: the same weights on both ranks, to the bit.
    assert ranks[0]["params"].keys() == ranks[1]["params"].keys()
    for name, tensor in ranks[0]["params"].items():
        assert torch.equal(tensor, ranks[1]["params"][name]), name
    # Early stopping and the LR schedule fired, and both ranks took the same decisions.
    history = ranks[0]["history"]
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in ranks[1]["history"]]
    assert ranks[0]["best_epoch"] == ranks[1]["best_epoch"] == loaded.metrics["best_epoch"]
    assert len(history) < 12, "early stopping never fired; the test proves nothing"
    assert history[-1]["lr"] < history[0]["lr"], "the LR schedule never fired; the test proves nothing"


TRAIN_ARGS = [
    "--limit-rows", "3000", "--epochs", "6", "--embedding-dim", "32", "--hidden-dim", "32", "--fc-dim", "32",
    "--subword-buckets", "0", "--no-linear-head", "--no-refit", "--no-calibrate", "--threads", "1", "--quiet",
    "--no-plots", "--seed", "1",
]  # fmt: skip


def test_two_nodes_train_one_model_that_matches_one_process(news_csv, nltk_dir, tmp_path):
    """Two torchrun launches (--nnodes 2, one process each, batch 32) vs one process with batch 64."""
    env = {**os.environ, **LOOPBACK_ENV, "NLTK_DATA": str(nltk_dir)}
    port, run_id = free_port(), uuid.uuid4().hex
    nodes = []
    for node in (0, 1):  # each "machine" has its own artifacts folder
        command = [
            *loopback_torchrun(2, 1, port, run_id), "-m", "training", "--data", str(news_csv),
            "--artifacts-dir", str(tmp_path / f"node{node}"), "--batch-size", "32", *TRAIN_ARGS,
        ]  # fmt: skip
        nodes.append(
            subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    single = subprocess.run(
        [sys.executable, "-m", "training", "--data", str(news_csv), "--artifacts-dir", str(tmp_path / "single"),
         "--batch-size", "64", *TRAIN_ARGS],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (_, err) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, err[-3000:]
    assert single.returncode == 0, single.stderr[-3000:]

    written = [list_versions(tmp_path / f"node{n}") for n in (0, 1)]
    assert sorted(len(v) for v in written) == [0, 1], f"exactly one node writes the artifact: {written}"
    folder = next(tmp_path / f"node{n}" / v[0] for n, v in enumerate(written) if v)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["timing"]["world_size"] == 2
    reference = json.loads((tmp_path / "single" / list_versions(tmp_path / "single")[0] / "metrics.json").read_text())
    assert reference["timing"]["world_size"] == 1
    f1, f1_single = metrics["test"]["overall"]["f1"], reference["test"]["overall"]["f1"]
    assert abs(f1 - f1_single) <= SEED_NOISE_F1, (f1, f1_single)
    assert metrics["test"]["overall"]["num_samples"] == reference["test"]["overall"]["num_samples"]
