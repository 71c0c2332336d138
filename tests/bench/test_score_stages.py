"""bench.score_stages: every stage of both engines is timed over the same rows."""

from __future__ import annotations

from pathlib import Path

import torch

from bench import score_stages
from service.inference.predictor import Predictor
from tests.service.conftest import TITLES, TOKEN_TEXTS, make_artifact


def test_both_engines_stages_are_timed_over_the_same_rows(tmp_path: Path) -> None:
    make_artifact(tmp_path, subword_buckets=97)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        predictor, other = (Predictor.load(tmp_path, device="cpu") for _ in range(2))
        rows = [[t] for t in [*TITLES, *TOKEN_TEXTS, ""] * 20]
        results = score_stages.stages(predictor, other, rows, chunk_rows=64, batch_size=16)
    finally:
        torch.set_num_threads(threads)
    assert set(results) == {"in-process engine", "local engine"}
    assert all(len(parts) >= 3 and all(s > 0 for s in parts.values()) for parts in results.values()), results
