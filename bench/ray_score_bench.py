"""Offline scoring throughput: ``--engine local`` beside ``--engine ray`` on 1 and 2 loopback nodes.

    python -m bench.ray_score_bench --rows 200000

Each Ray point starts its own cluster (``ray.cluster_utils.Cluster``, one CPU per node, all on
127.0.0.1), scores the same file through ``python -m service.score``'s entry point and stops the
cluster. The fixed cost is a Ray run on a 100-row file (the second one on the cluster: the first
also starts Ray's worker processes): connecting, starting the actors, shipping and loading the
model, shutting down. Rows/s count the whole command, model loading
included, so they are what a user sees; the last column removes the fixed cost.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import redirect_stderr
from io import StringIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEWS = Path(os.environ.get("NEWS_DATA", ROOT.parent / "shared" / "data" / "news_10k.csv"))


def write_archive(path: Path, rows: int) -> Path:
    with NEWS.open(newline="", encoding="utf-8") as handle:
        titles = [r["title"] for r in csv.DictReader(handle)]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "title"])
        writer.writerows([i, titles[i % len(titles)]] for i in range(rows))
    return path


def timed_score(argv: list[str]) -> float:
    from service.score import main

    started = time.perf_counter()
    with redirect_stderr(StringIO()) as err:
        code = main(argv)
    if code != 0:
        raise SystemExit(f"scoring failed ({code}): {err.getvalue()}")
    return time.perf_counter() - started


def ray_point(nodes: int, source: Path, small: Path, out: Path, artifacts: Path) -> tuple[float, float]:
    """(seconds for ``source``, seconds for ``small``) on a fresh cluster of ``nodes`` one-CPU nodes."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        common = ["--artifacts-dir", str(artifacts), "--output", str(out), "--engine", "ray"]
        common += ["--ray-address", cluster.address]
        timed_score([*common, "--input", str(small)])  # the cluster's first job also starts its worker processes
        fixed = timed_score([*common, "--input", str(small)])
        full = timed_score([*common, "--input", str(source)])
    finally:
        cluster.shutdown()
    return full, fixed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ray_score_bench", description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--artifacts-dir", type=Path, default=ROOT / "artifacts")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hc-ray-bench-") as tmp:
        folder = Path(tmp)
        source = write_archive(folder / "archive.csv", args.rows)
        small = write_archive(folder / "small.csv", 100)
        out = folder / "out.csv"
        results: list[tuple[str, float, float]] = []
        for threads in (1, 2):
            base = ["--artifacts-dir", str(args.artifacts_dir), "--output", str(out), "--threads", str(threads)]
            fixed = timed_score([*base, "--input", str(small)])
            results.append((f"local, {threads} thread(s)", timed_score([*base, "--input", str(source)]), fixed))
        for nodes in (1, 2):
            full, fixed = ray_point(nodes, source, small, out, args.artifacts_dir)
            results.append((f"ray, {nodes} node(s) x 1 CPU", full, fixed))
    print(f"{args.rows:,} rows, {os.cpu_count()} CPUs on this machine")
    print(f"{'engine':<26} {'seconds':>8} {'rows/s':>8} {'fixed s':>8} {'rows/s after fixed':>19}")
    for name, full, fixed in results:
        net = args.rows / (full - fixed) if full > fixed else float("nan")
        print(f"{name:<26} {full:>8.2f} {args.rows / full:>8,.0f} {fixed:>8.2f} {net:>19,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
