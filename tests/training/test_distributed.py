"""Two CPU processes under torchrun (gloo): one artifact written by rank 0, identical weights
and identical early-stopping / learning-rate decisions on every rank."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from contract.artifact import list_versions, load_artifact
from tests.training.conftest import small_csv

ROOT = Path(__file__).resolve().parents[2]


def test_torchrun_two_processes_agree_and_write_one_artifact(news_csv, nltk_dir, tmp_path):
    data = tmp_path / "small.csv"
    small_csv(news_csv, data, 400)
    artifacts, out = tmp_path / "artifacts", tmp_path / "ranks"
    out.mkdir()
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(ROOT / "tests" / "training" / "ddp_worker.py"), str(data), str(artifacts), str(nltk_dir), str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
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
