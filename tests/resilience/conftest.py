"""Live-server fixtures for the resilience suite (``pytest -m resilience tests/resilience``).

Load comes from ``bench.loadgen`` run as its own process (``python -m bench.loadgen``), so the
client never shares an interpreter (or a GIL) with the test; traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.loadgen import write_bodies
from tests.service.conftest import TITLES, make_artifact

ROOT = Path(__file__).resolve().parents[2]
NEWS_DATA = Path(os.environ.get("NEWS_DATA", ROOT.parent / "shared" / "data" / "news_10k.csv"))
V1 = "20260101T000000Z-000001"
V2 = "20260102T000000Z-000002"


def read_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def read_tree_rss_kb(pid: int) -> int:
    """RSS of a server and its model process together (a leak in either counts)."""
    from bench.proc_stats import child_pids

    children = child_pids(pid)
    assert children, f"server {pid} has no model process"
    return read_rss_kb(pid) + sum(read_rss_kb(child) for child in children)


@pytest.fixture(scope="session")
def titles() -> list[str]:
    """Real headlines when NEWS_DATA is readable, else the unit tests' handful."""
    try:
        with NEWS_DATA.open(newline="", encoding="utf-8") as fh:
            found = [row["title"] for row in csv.DictReader(fh) if row.get("title")]
    except OSError:
        found = []
    return found[:2000] or TITLES


@pytest.fixture(scope="session")
def bodies_file(tmp_path_factory: pytest.TempPathFactory, titles: list[str]) -> Path:
    return write_bodies(({"text": t} for t in titles), tmp_path_factory.mktemp("load") / "single.jsonl")


@pytest.fixture(scope="session")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two valid default-size versions (``V1`` older, ``V2`` newer)."""
    root = tmp_path_factory.mktemp("artifacts-two")
    make_artifact(root, seed=1, version=V1, size="default")
    make_artifact(root, seed=2, version=V2, size="default")
    return root


@dataclass
class BackgroundLoad:
    """``python -m bench.loadgen`` running in the background; :meth:`result` waits for its JSON."""

    process: subprocess.Popen[str]

    def result(self, timeout: float = 120.0) -> dict[str, Any]:
        out, err = self.process.communicate(timeout=timeout)
        assert self.process.returncode == 0, f"loadgen failed: {err}"
        return json.loads(out.strip().splitlines()[-1])


def start_load(
    port: int,
    bodies: Path | None,
    concurrency: int,
    duration_s: float,
    *,
    path: str = "/predict",
    timeout_s: float = 30,
) -> BackgroundLoad:
    cmd = [sys.executable, "-m", "bench.loadgen", "--port", str(port), "--path", path]
    cmd += ["-c", str(concurrency), "-d", str(duration_s), "--timeout", str(timeout_s)]
    if bodies is not None:
        cmd += ["--bodies", str(bodies)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return BackgroundLoad(proc)


@pytest.fixture
def load_factory() -> Iterator[Any]:
    started: list[BackgroundLoad] = []

    def factory(*args: Any, **kwargs: Any) -> BackgroundLoad:
        load = start_load(*args, **kwargs)
        started.append(load)
        return load

    yield factory
    for load in started:  # a failed test must not leave a client running
        if load.process.poll() is None:
            load.process.kill()
            load.process.wait()
