"""What a pod of the API needs: time from start to ready, and memory of both processes.

    python -m bench.pod_footprint --runs 3

Starts ``python -m service`` as the Kubernetes Deployment runs it (``HC_TORCH_THREADS=1``,
default settings otherwise), times the start to the first 200 from /health/ready, sends 300
requests of 64 headlines so the heaps reach their working size, then reads RSS and PSS of the
HTTP process and of the model process from /proc (PSS splits shared pages between them, so
the PSS sum is close to what the pod's memory cgroup is charged). deploy/kubernetes sizes the
startup probe and the memory request and limit from these numbers (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from tests.service.live_server import LiveServer, free_port

ROOT = Path(__file__).resolve().parents[1]


def memory_mib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in MiB, from /proc/PID/smaps_rollup."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            values[key] = int(rest.split()[0]) // 1024
    return values["Rss"], values["Pss"]


def one_run(artifacts: Path) -> tuple[float, list[tuple[int, int]]]:
    port = free_port()
    env = {**os.environ, "HC_TORCH_THREADS": "1", "HC_PORT": str(port), "HC_LOG_LEVEL": "warning"}
    started = time.monotonic()
    log = tempfile.NamedTemporaryFile(prefix="hc-footprint-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "--artifacts-dir", str(artifacts)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    server = LiveServer(process, port, Path(log.name))
    try:
        server.wait_ready(timeout=300)
        ready_s = time.monotonic() - started
        with httpx.Client(base_url=server.url) as client:
            for i in range(300):
                client.post("/predict", json={"texts": [f"Stocks rally as markets jump {i}"] * 64})
        # Every thread's children: the model process may be started from a loader thread.
        tasks = Path(f"/proc/{process.pid}/task").iterdir()
        children = [c for task in tasks for c in (task / "children").read_text().split()]
        return ready_s, [memory_mib(process.pid), *(memory_mib(int(c)) for c in children)]
    finally:
        server.stop(timeout=60)
        Path(log.name).unlink()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pod_footprint", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--artifacts-dir", type=Path, default=ROOT / "artifacts")
    args = parser.parse_args(argv)
    print(f"{'run':>3} {'ready s':>8} {'http RSS/PSS MiB':>17} {'model RSS/PSS MiB':>18} {'PSS sum':>8}")
    for run in range(1, args.runs + 1):
        ready, procs = one_run(args.artifacts_dir)
        cells = [f"{rss}/{pss}" for rss, pss in procs]
        print(f"{run:>3} {ready:>8.2f} {cells[0]:>17} {' '.join(cells[1:]):>18} {sum(p for _, p in procs):>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
