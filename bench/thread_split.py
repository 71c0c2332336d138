"""Where a loaded server's CPU goes, thread by thread, per answered request (Linux).

Runs ``python -m service`` with its defaults, drives it with ``wrk`` at each ``--connections``
(one real headline per request) and reads every thread's ``/proc/.../schedstat`` over a window
in the middle of the run: CPU microseconds per request, the share of the window it waited
runnable for a CPU (run-queue wait: the CPUs were busy), and how often it was woken per
request. The model process and wrk are listed beside the server's threads, so the rows add up
to what the machine spent. A thread that is rarely runnable-but-waiting has CPUs to spare; a
high run-queue wait everywhere means the CPUs themselves are the limit.

    python -m bench.thread_split                         # 64 and 256 connections
    python -m bench.thread_split --connections 64 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from bench.floor_compare import HEADLINE
from bench.proc_stats import child_pids
from bench.serve_bench import launch

ROOT = Path(__file__).resolve().parents[1]


def _schedstat(task: Path) -> tuple[int, int, int] | None:
    """(ns on a CPU, ns runnable but waiting, times scheduled) of one thread; None once it is gone."""
    try:
        run, wait, slices = (int(v) for v in (task / "schedstat").read_text().split())
        return run, wait, slices
    except (OSError, ValueError):
        return None


# The server's threads as the OS names them (service/inference/threads.py: name_os_thread).
_ROLES = {"hc-model": "model thread", "hc-log": "logging thread"}


def _threads(pid: int, label: str, main: str) -> dict[str, tuple[int, int, int]]:
    """Every thread of ``pid`` with its schedstat, named ``main`` (its main thread), its role, or
    ``label: thread <tid>``."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = _schedstat(task)
        if stat is not None:
            role = _ROLES.get((task / "comm").read_text().strip())
            found[main if task.name == str(pid) else role or f"{label}: thread {task.name}"] = stat
    return found


def _snapshot(server: int, client: int) -> dict[str, tuple[int, int, int]]:
    threads = _threads(server, "server", "server: event loop")
    for child in child_pids(server):
        threads |= _threads(child, "model process", "model process")
    return threads | _threads(client, "wrk", "wrk: main")


def _answered(port: int) -> float:
    """200 answers to POST /predict so far, from the server's own counter."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    match = re.search(r'^hc_http_requests_total\{method="POST",route="/predict",status="200"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def measure(port: int, server: int, connections: int, seconds: float) -> dict[str, object]:
    """One wrk run; the per-thread split over its middle ``seconds - 4`` seconds."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps({"text": HEADLINE}))}\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
    wrk = subprocess.Popen(
        ["wrk", "-t1", f"-c{connections}", f"-d{round(seconds)}s", "-s", script.name, f"http://127.0.0.1:{port}/predict"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(2.0)  # past the ramp-up
        before, answered, started = _snapshot(server, wrk.pid), _answered(port), time.monotonic()
        time.sleep(seconds - 4.0)
        after, window = _snapshot(server, wrk.pid), time.monotonic() - started
        requests = _answered(port) - answered
        out, _ = wrk.communicate(timeout=seconds + 30)
    finally:
        Path(script.name).unlink()
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    rows = []
    for name, (run, wait, slices) in after.items():
        if name not in before:
            continue
        r0, w0, s0 = before[name]
        rows.append(
            {
                "thread": name,
                "cpu_us_per_request": (run - r0) / 1e3 / max(requests, 1),
                "runqueue_wait_share": (wait - w0) / 1e9 / window,
                "wakeups_per_request": (slices - s0) / max(requests, 1),
            }
        )
    rows.sort(key=lambda row: -float(row["cpu_us_per_request"]))  # type: ignore[arg-type]
    return {"connections": connections, "rps": float(rate.group(1)) if rate else 0.0, "threads": rows}


def report(result: dict[str, object]) -> str:
    lines = [
        f"{result['connections']} connections: {result['rps']:,.0f} req/s",
        f"{'thread':<34} {'CPU µs/request':>15} {'run-queue wait':>15} {'wake-ups/request':>17}",
    ]
    total = 0.0
    for row in result["threads"]:  # type: ignore[attr-defined]
        if row["cpu_us_per_request"] < 0.5:
            continue
        total += row["cpu_us_per_request"]
        lines.append(
            f"{row['thread']:<34} {row['cpu_us_per_request']:>15.1f} {row['runqueue_wait_share']:>14.0%} "
            f"{row['wakeups_per_request']:>17.2f}"
        )
    lines.append(f"{'all of the above':<34} {total:>15.1f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.thread_split", description=__doc__.split("\n")[0])
    parser.add_argument("--artifacts-dir", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--connections", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per wrk run (the window is 4 less)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "thread_split.json")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("wrk not found (apt-get install wrk)")
    if args.seconds < 6:
        parser.error("--seconds must be at least 6")
    results = []
    scratch = Path(tempfile.mkdtemp(prefix="thread-split-"))
    with launch(args.artifacts_dir, [], scratch, "service") as handle:  # its defaults: access log on
        for connections in args.connections:
            results.append(measure(handle.port, handle.process.pid, connections, args.seconds))
            print(report(results[-1]), "\n", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
