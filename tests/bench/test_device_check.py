"""The GPU check's own arithmetic and bookkeeping (the CUDA arms themselves need a GPU machine)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench import device_check
from bench.device_check import max_abs_diff, parse_run, response_table, train_report
from contract.artifact import resolve_version

ROOT = Path(__file__).resolve().parents[2]


def test_max_abs_diff_is_the_largest_elementwise_gap() -> None:
    assert max_abs_diff([[0.1, 0.9], [0.5, 0.5]], [[0.1, 0.9], [0.2, 0.8]]) == pytest.approx(0.3)
    assert max_abs_diff([], []) == 0.0
    with pytest.raises(ValueError):
        max_abs_diff([[0.1, 0.9]], [[0.1, 0.9], [0.5, 0.5]])
    with pytest.raises(ValueError):
        max_abs_diff([[0.1, 0.9]], [[0.1]])


def test_response_table_follows_request_order_and_the_given_class_order() -> None:
    body = {
        "predictions": [
            {"label": "B", "probabilities": {"B": 0.7, "A": 0.3}},
            {"label": "A", "probabilities": {"A": 0.6, "B": 0.4}},
        ]
    }
    assert response_table(body, ["A", "B"]) == [[0.3, 0.7], [0.6, 0.4]]


def test_parse_run_needs_device_and_folder() -> None:
    assert parse_run("cuda=/tmp/a=b") == ("cuda", Path("/tmp/a=b"))
    for bad in ("cuda", "=dir", "cuda="):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_run(bad)


def test_train_report_reads_the_newest_artifact_and_skips_a_missing_run(tmp_path, capsys) -> None:
    folder = ROOT / "artifacts"
    metrics = json.loads((resolve_version(folder) / "metrics.json").read_text())
    summary = tmp_path / "summary.txt"

    rows = train_report({"cuda": tmp_path / "never-written", "cpu": folder}, summary)

    assert list(rows) == ["cpu"]
    assert rows["cpu"]["test_f1"] == metrics["test"]["overall"]["f1"]
    assert rows["cpu"]["s_per_epoch"] == metrics["timing"]["seconds_per_epoch"]
    assert "skip: cuda: no artifact" in capsys.readouterr().out
    line = summary.read_text()
    assert line.startswith("train: cpu_s_per_epoch=") and "cuda" not in line and line.endswith("\n")


def test_without_cuda_only_the_cpu_arm_runs(monkeypatch, capsys) -> None:
    monkeypatch.setattr(device_check, "cuda_available", lambda: False)
    assert device_check.devices() == ["cpu"]
    assert "skip: CUDA is not available" in capsys.readouterr().out
    monkeypatch.setattr(device_check, "cuda_available", lambda: True)
    assert device_check.devices() == ["cuda", "cpu"]
