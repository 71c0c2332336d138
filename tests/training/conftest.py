"""Training-test fixtures: one CPU thread (the CI box is small and shared) and a tiny CSV."""

from __future__ import annotations

import csv

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    torch.set_num_threads(1)


def small_csv(source, target, rows: int, extra: list[tuple[str, str]] = ()) -> None:
    """Every (10000 // rows)-th row of the 10K sample (all classes), plus ``extra`` rows."""
    with open(source, encoding="utf-8", newline="") as handle:
        data = list(csv.DictReader(handle))
    step = max(1, len(data) // rows)
    with open(target, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["title", "category"])
        for row in data[::step][:rows]:
            writer.writerow([row["title"], row["category"]])
        writer.writerows(extra)
