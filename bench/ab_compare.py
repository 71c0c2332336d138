"""Before / after: two checkouts of this service side by side, interleaved, in one run.

    git archive <old-commit> | tar -x -C /tmp/before     # any earlier checkout
    python -m bench.ab_compare --before /tmp/before --after .

Both servers run at once with their defaults (access log on); each load point visits them in
turn, a ``--duration`` slice each, ``--rounds`` times, and reports medians, so load from the
rest of the machine falls on both alike. Besides req/s and latency it reports the server's
CPU time per request (all threads / event-loop thread), read from /proc.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.proc_stats import cpu_s
from bench.serve_bench import DEFAULT_DATA, ROOT, launch, read_titles


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="root of the earlier checkout")
    parser.add_argument("--after", type=Path, default=ROOT, help="root of the later checkout (default: this one)")
    parser.add_argument("--artifacts-dir", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--clients", default="1,64", help="clients for POST /predict, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    args = parser.parse_args(argv)

    from bench.loadgen import run_load, write_bodies

    titles = read_titles(args.data)
    clients = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="hc-ab-") as tmp, contextlib.ExitStack() as stack:
        scratch = Path(tmp)
        bodies = write_bodies(({"text": t} for t in random.Random(0).sample(titles, 2000)), scratch / "b.jsonl")
        servers = {}
        for name, root in (("before", args.before), ("after", args.after)):
            server = stack.enter_context(launch(args.artifacts_dir.resolve(), [], scratch, name, cwd=root.resolve()))
            servers[name] = server
        points = [("/health/live", 64)] + [("/predict", c) for c in clients]
        rows: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        for path, c in points:
            for _ in range(args.rounds):
                for name, server in servers.items():
                    before = cpu_s(server.process.pid)
                    r = run_load(server.port, path, bodies if path == "/predict" else None, c, args.duration, workers=1)
                    after = cpu_s(server.process.pid)
                    n = max(1, sum(r["statuses"].values()))
                    r["cpu_us"], r["loop_us"] = (after[0] - before[0]) / n * 1e6, (after[1] - before[1]) / n * 1e6
                    rows.setdefault((path, name, c), []).append(r)
    med = statistics.median
    print("| Endpoint | Clients | Checkout | req/s (median) | slices | p50 ms | p99 ms | CPU us/req | loop us/req |")
    print("|---|---:|---|---:|---|---:|---:|---:|---:|")
    for (path, name, c), rs in rows.items():
        print(
            f"| {path} | {c} | {name} | {med(r['rps'] for r in rs):,.0f} | {[round(r['rps']) for r in rs]} "
            f"| {med(r['latency_ms']['p50'] for r in rs):.2f} | {med(r['latency_ms']['p99'] for r in rs):.2f} "
            f"| {med(r['cpu_us'] for r in rs):.0f} | {med(r['loop_us'] for r in rs):.0f} |"
        )
    print()
    print("| Endpoint | Clients | after / before req/s | before / after CPU per request |")
    print("|---|---:|---:|---:|")
    for path, c in points:
        b, a = rows[(path, "before", c)], rows[(path, "after", c)]
        speed = med(r["rps"] for r in a) / med(r["rps"] for r in b)
        cpu = med(r["cpu_us"] for r in b) / med(r["cpu_us"] for r in a)
        print(f"| {path} | {c} | {speed:.2f}x | {cpu:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
