"""Two CPU processes under torchrun (gloo): one artifact, written by rank 0 only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from contract.artifact import list_versions, load_artifact
from tests.training.conftest import small_csv

ROOT = Path(__file__).resolve().parents[2]


def test_torchrun_two_processes_write_one_artifact(news_csv, tmp_path):
    data = tmp_path / "small.csv"
    small_csv(news_csv, data, 400)
    artifacts = tmp_path / "artifacts"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "training", "--data", str(data), "--artifacts-dir", str(artifacts), "--device", "cpu",
        "--epochs", "2", "--batch-size", "32", "--embedding-dim", "16", "--hidden-dim", "16", "--fc-dim", "16",
        "--threads", "1", "--baseline-c", "10", "--no-plots", "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    versions = list_versions(artifacts)
    assert len(versions) == 1
    assert result.stdout.count("artifact written to") == 1
    loaded = load_artifact(artifacts / versions[0])
    assert loaded.metrics["timing"]["world_size"] == 2
    assert [h["epoch"] for h in loaded.metrics["history"]] == [1, 2]
    assert not [p for p in artifacts.iterdir() if p.name.startswith(".")]
