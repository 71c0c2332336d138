"""Offline scoring benchmark: ``python -m scoring`` on generated files of 10K to 300K rows.

Each file is the 10K sample repeated (rows cycle through it) and lives in a temporary folder
that is deleted afterwards. Every size runs as its own ``python -m scoring`` process, pinned to
``--threads`` CPUs (so on a bigger machine the figure is still a 2-CPU figure). The figure a user
meets is the wall clock from starting the process to its exit: interpreter start, imports, the
model process's torch import and artifact load, reading, the forward passes and writing. Beside
it: the scorer's own timing from its summary line (from the start of its ``main``: everything
but the interpreter start and the reader's imports), the fixed start cost (the same command on
a one-row file), the peak RSS from ``wait4`` (the larger of the reading and the model process:
equal across sizes is what "constant memory" means here) and the CPU time of both processes.
The server's ``{"texts": [...]}`` headlines/s is measured in the same run, for the side-by-side
figure. Writes ``bench/out/score_bench.json``.

    python -m bench.score_bench                         # artifacts/, 2 threads, 10K/100K/300K rows
    python -m bench.score_bench --sizes 10000,100000 --repeat 3
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.report import publish, stamped

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("NEWS_DATA", ROOT.parent / "shared" / "data" / "news_10k.csv"))
DEFAULT_OUT = ROOT / "bench" / "out" / "score_bench.json"
SIZES = (10_000, 100_000, 300_000)
TARGET_ROWS = 100_000
TARGET_HEADLINES_PER_S = 25_000.0
_SUMMARY = re.compile(r"scored ([\d,]+) rows in ([\d.]+) s")


def write_input(data: Path, rows: int, path: Path) -> Path:
    """``rows`` rows cycling through ``data`` (header kept), written as CSV."""
    with data.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        sample = list(reader)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for start in range(0, rows, len(sample)):
            writer.writerows(sample[: min(len(sample), rows - start)])
    return path


def run_scorer(artifacts_dir: Path, src: Path, dst: Path, threads: int, batch_size: int | None) -> dict[str, Any]:
    """One scorer process: its own timing (from its summary line), wall time from start to exit, peak RSS
    (``wait4``: the larger of the process and the model process it waited for) and CPU time of both."""
    cmd = [sys.executable, "-m", "scoring", "--artifacts-dir", str(artifacts_dir), "--input", str(src)]
    cmd += ["--output", str(dst), "--threads", str(threads), "--device", "cpu"]
    if batch_size:
        cmd += ["--batch-size", str(batch_size)]
    cpus = sorted(os.sched_getaffinity(0))[:threads]  # on a bigger machine, really only `threads` CPUs
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    match = _SUMMARY.search(stderr)
    if proc.returncode != 0 or match is None:
        raise SystemExit(f"error: scorer failed ({proc.returncode}): {stderr.strip()}")
    rows, seconds = int(match.group(1).replace(",", "")), float(match.group(2))
    return {
        "rows": rows,
        "scoring_s": seconds,
        "headlines_per_s": rows / seconds,
        "wall_s": round(wall, 3),
        "end_to_end_headlines_per_s": rows / wall,
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux: kilobytes
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
    }


# Parts of the fixed start cost, each timed as a process of its own (best of three).
START_PARTS = {
    "interpreter start": "pass",
    "interpreter + the reading process's imports": "import scoring.score, scoring.local_engine",
    "interpreter + import torch (the model process)": "import torch",
}


def best_wall(code: str, threads: int, runs: int = 3) -> float:
    """Best wall seconds of ``python -c code`` over ``runs``, pinned like the scorer."""
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    walls = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, check=True, preexec_fn=lambda: os.sched_setaffinity(0, cpus)
        )
        walls.append(time.perf_counter() - started)
    return round(min(walls), 3)


def served_texts_figure(artifacts_dir: Path, titles: list[str], scratch: Path, seconds: float) -> dict[str, Any]:
    """The server's ``{"texts": [...]}`` headlines/s, measured in this run for the side-by-side table.

    As in the serving bench: 256 headlines per request, 4 closed-loop clients, queue of 4096.
    """
    import random

    from bench.loadgen import run_load, write_bodies
    from tests.service.live_server import launch_server

    shuffled = titles[:]
    random.Random(0).shuffle(shuffled)
    groups = [shuffled[i : i + 256] for i in range(0, len(shuffled) - 255, 256)][:40]
    bodies = write_bodies(({"texts": g} for g in groups), scratch / "texts.jsonl")
    with launch_server(artifacts_dir, "--max-queue-size=4096", "--no-access-log") as server:
        run_load(server.port, "/predict", bodies, 4, 1.0)
        result = run_load(server.port, "/predict", bodies, 4, seconds)
    ok = result["statuses"].get("200", 0)
    return {"clients": 4, "texts_per_request": 256, "headlines_per_s": ok * 256 / result["duration_s"], **result}


def markdown(results: dict[str, Any]) -> str:
    points = results["points"]
    best = {size: max(runs, key=lambda r: r["end_to_end_headlines_per_s"]) for size, runs in points.items()}
    target = best.get(str(TARGET_ROWS))
    served = results.get("served_texts") and results["served_texts"]["headlines_per_s"]
    start = results.get("start_up")
    threads = results["settings"]["threads"]
    lines = [
        "| Figure | Value | Target |",
        "|---|---:|---|",
    ]
    if target is not None:
        ok = target["end_to_end_headlines_per_s"] >= TARGET_HEADLINES_PER_S
        lines.append(
            f"| `python -m scoring`, {TARGET_ROWS:,} rows, {threads} CPUs, process start to exit: headlines/s | "
            f"**{target['end_to_end_headlines_per_s']:,.0f}** ({target['wall_s']:.2f} s) | "
            f"≥ {TARGET_HEADLINES_PER_S:,.0f} {'✅' if ok else '❌'} |"
        )
        lines.append(
            f"| … the scorer's own timing (its summary line: no interpreter start, no reader imports) | "
            f"{target['headlines_per_s']:,.0f} ({target['scoring_s']:.2f} s) | – |"
        )
    if start is not None:
        lines.append(
            f"| Fixed start cost: the same command on a one-row file, process start to exit "
            f"| {start['wall_s']:.2f} s | – |"
        )
    for name, wall in results.get("start_parts", {}).items():
        lines.append(f"| … alone: {name} | {wall:.2f} s | – |")
    if served is not None:
        lines.append(f'| Server, `{{"texts": [...]}}` x256 over HTTP, 4 clients: headlines/s | {served:,.0f} | – |')
    sizes = sorted(best, key=int)
    if len(sizes) >= 2:
        small, large = best[sizes[0]], best[sizes[-1]]
        lines.append(
            f"| Peak RSS, {int(sizes[-1]):,} rows / {int(sizes[0]):,} rows | "
            f"{large['peak_rss_mib'] / small['peak_rss_mib']:.2f}x | ≈ 1 (constant memory) |"
        )
        # CPU time per extra row (start-up and model load cancel out): what the scorer costs
        # regardless of how busy the machine was, and the rate it allows on `threads` idle CPUs.
        per_row = (large["cpu_s"] - small["cpu_s"]) / (int(sizes[-1]) - int(sizes[0]))
        if per_row > 0:
            lines.append(
                f"| CPU time per row ({int(sizes[0]):,} → {int(sizes[-1]):,} rows), and the rate it allows on "
                f"{threads} idle CPUs | {per_row * 1e6:.1f} µs → {threads / per_row:,.0f} headlines/s | – |"
            )
    lines += [
        "",
        "| Rows | Process wall s | Headlines/s, process start to exit | Scorer's own s | Peak RSS MiB | CPU s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        r = best[size]
        lines.append(
            f"| {int(size):,} | {r['wall_s']:.2f} | {r['end_to_end_headlines_per_s']:,.0f} | {r['scoring_s']:.2f} "
            f"| {r['peak_rss_mib']:.1f} | {r['cpu_s']:.2f} |"
        )
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts-dir", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CSV with a title column [env NEWS_DATA]")
    parser.add_argument("--sizes", type=_ints, default=list(SIZES), help="rows per generated file, comma-separated")
    parser.add_argument("--threads", type=int, default=2, help="CPUs the scorer is pinned to (default 2)")
    parser.add_argument("--batch-size", type=int, default=None, help="scorer --batch-size (default: its own)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per size; the best is reported")
    parser.add_argument(
        "--served-s", type=float, default=5.0, help="seconds of the server's texts x256 figure (0: skip)"
    )
    parser.add_argument("--quick", action="store_true", help="10K and 100K rows, one run each")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeat, args.served_s = [10_000, TARGET_ROWS], 1, min(args.served_s, 2.0)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from bench.serve_bench import find_artifacts, read_titles

    args = parse_args(argv)
    results: dict[str, Any] = {
        **stamped(),
        "settings": {"threads": args.threads, "batch_size": args.batch_size, "repeat": args.repeat},
        "points": {},
    }
    with tempfile.TemporaryDirectory(prefix="hc-score-bench-") as tmp:
        scratch = Path(tmp)
        artifacts_dir, described = find_artifacts(args.artifacts_dir, read_titles(args.data), scratch)
        results["model"] = described
        print(f"model {described}; scorer on {args.threads} threads", flush=True)
        one = write_input(args.data, 1, scratch / "in-1.csv")
        start = min(
            (run_scorer(artifacts_dir, one, scratch / "out-1.csv", args.threads, args.batch_size) for _ in range(3)),
            key=lambda r: r["wall_s"],
        )
        results["start_up"] = start
        results["start_parts"] = {name: best_wall(code, args.threads) for name, code in START_PARTS.items()}
        print(f"  one-row file: {start['wall_s']:.2f} s from process start to exit", flush=True)
        for name, wall in results["start_parts"].items():
            print(f"  {name}: {wall:.2f} s", flush=True)
        for size in args.sizes:
            src = write_input(args.data, size, scratch / f"in-{size}.csv")
            runs = []
            for _ in range(args.repeat):
                run = run_scorer(artifacts_dir, src, scratch / f"out-{size}.csv", args.threads, args.batch_size)
                print(
                    f"  {size:>9,} rows: {run['end_to_end_headlines_per_s']:>9,.0f} headlines/s from process start "
                    f"(wall {run['wall_s']:.2f} s; scorer's own {run['headlines_per_s']:,.0f}/s)  "
                    f"peak RSS {run['peak_rss_mib']:.1f} MiB",
                    flush=True,
                )
                runs.append(run)
            results["points"][str(size)] = runs
            src.unlink()
        if args.served_s > 0:
            print("server, 256 headlines per request, 4 clients", flush=True)
            results["served_texts"] = served_texts_figure(artifacts_dir, read_titles(args.data), scratch, args.served_s)
            print(f"  {results['served_texts']['headlines_per_s']:>9,.0f} headlines/s", flush=True)
    results["markdown"] = markdown(results)
    return publish(results, args.out)


if __name__ == "__main__":
    main()
