"""The CPU accounting the serving benchmarks report beside their rates."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.floor_compare import cpu_ceiling
from bench.thread_split import _threads
from service.inference.batching import ModelThread


def test_the_cpu_ceiling_counts_the_server_and_wrk_on_every_cpu() -> None:
    point = {"cpu_us_per_request": 80.0, "client_cpu_us_per_request": 20.0}
    assert cpu_ceiling(point) == pytest.approx((os.cpu_count() or 1) * 1e6 / 100.0)
    assert cpu_ceiling({"cpu_us_per_request": 80.0}) is None  # http.client: no client figure


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
def test_threads_are_labelled_by_role() -> None:
    executor = ModelThread()
    try:
        executor.submit(lambda: None).result()  # the worker thread exists and is named
        threads = _threads(os.getpid(), "tests", "tests: main")
    finally:
        executor.shutdown()
    assert "tests: main" in threads and "model thread" in threads
    run, wait, slices = threads["tests: main"]
    assert run > 0 and wait >= 0 and slices > 0
