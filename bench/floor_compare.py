"""The service beside the HTTP stack's own floor, measured the way a user meets both.

Two servers run side by side: ``python -m service`` with its defaults (access log on) and
``bench/floor_app.py`` (uvicorn + httptools + uvloop answering a fixed ``/predict``-shaped JSON
document). Every point is measured on both in turn, ``--rounds`` times, and reported as the
median with the ratio beside it, so the machine's other work hits both alike:

- ``wrk`` (a C client: its own cost is small) at 64 and 256 connections and at 1 connection,
  one real headline per request: req/s, p50, p99, non-2xx answers and socket errors;
- a plain ``http.client`` keep-alive loop, one request at a time: p50 and p99 as a Python
  client sees them (its own cost included: the floor's figure shows how much that is);
- the CPU each server's processes spent per request (the model process included), and wrk's
  own: with both, the rate at which this machine's CPUs would be fully used. A server that
  reaches it is CPU-bound, and only cheaper requests can make it faster.

    python -m bench.floor_compare                    # artifacts/, 3 rounds
    python -m bench.serve_bench                      # runs this first, then its own points

Without ``wrk`` on the PATH only the ``http.client`` points are measured.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.proc_stats import tree_cpu_s
from bench.serve_bench import launch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("NEWS_DATA", ROOT.parent / "shared" / "data" / "news_10k.csv"))
WRK_POINTS = (64, 256, 1)
HEADLINE = "Stocks rally as oil prices fall on hopes of a deal"


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNIT[unit]


def run_wrk(port: int, connections: int, seconds: float, body: str) -> dict[str, float]:
    """One ``wrk`` run against ``POST /predict``: req/s, p50/p99 in ms, non-2xx and socket errors."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\nwrk.headers["Content-Type"] = "application/json"\n'
        )
    before = _children_cpu_s()
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s", script.name,
             f"http://127.0.0.1:{port}/predict"],
            capture_output=True, text=True, check=True, timeout=seconds + 60,
        ).stdout  # fmt: skip
    finally:
        os.unlink(script.name)
    client_cpu_s = _children_cpu_s() - before
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    requests = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "requests": requests,
        "client_cpu_us_per_request": client_cpu_s / max(1.0, requests) * 1e6,
        "p50_ms": _ms(re.search(r"\s50%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
        "p99_ms": _ms(re.search(r"\s99%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
        "non_2xx": float(non2xx.group(1)) if non2xx else 0.0,
        "socket_errors": float(sum(int(g) for g in errors.groups())) if errors else 0.0,
    }


def _children_cpu_s() -> float:
    """User + system CPU seconds of this process's finished children (each wrk run, once reaped)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_http_client(port: int, requests: int, body: str) -> dict[str, float]:
    """A plain ``http.client`` keep-alive loop, one request at a time: p50/p99 in ms."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    payload, headers = body.encode(), {"Content-Type": "application/json"}
    latencies = []
    for i in range(requests + 100):  # the first 100 warm the connection and both ends
        started = time.perf_counter()
        conn.request("POST", "/predict", payload, headers)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"http.client got {response.status}")
        if i >= 100:
            latencies.append(time.perf_counter() - started)
    conn.close()
    latencies.sort()
    return {
        "p50_ms": latencies[len(latencies) // 2] * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
        "rps": len(latencies) / sum(latencies),
    }


def measure(pid: int, point: str, port: int, seconds: float, body: str, requests: int) -> dict[str, float]:
    """One point on one server, with its processes' CPU per request."""
    cpu = tree_cpu_s(pid)
    if point == "http.client":
        result = run_http_client(port, requests, body)
        count = requests + 100
    else:
        result = run_wrk(port, int(point.split("-c")[1]), seconds, body)
        count = int(result["requests"])
    result["cpu_us_per_request"] = (tree_cpu_s(pid) - cpu) / max(1, count) * 1e6
    return result


def compare(
    artifacts_dir: Path,
    rounds: int = 3,
    seconds: float = 5.0,
    requests: int = 2000,
    points: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Every point on the service and on the floor app, interleaved; medians and ratios."""
    have_wrk = shutil.which("wrk") is not None
    if points is None:
        points = [*(f"wrk-c{c}" for c in WRK_POINTS if have_wrk), "http.client"]
    if not have_wrk:
        print("note: wrk not found (apt-get install wrk): measuring http.client only", flush=True)
    body = json.dumps({"text": HEADLINE})
    scratch = Path(tempfile.mkdtemp(prefix="floor-"))
    names = ("service", "floor")
    runs: dict[str, dict[str, list[dict[str, float]]]] = {name: {p: [] for p in points} for name in names}
    with (
        launch(artifacts_dir, [], scratch, "service") as service,  # its defaults: access log on
        launch(artifacts_dir, None, scratch, "floor", module="bench.floor_app") as floor,
    ):
        handles = {"service": service, "floor": floor}
        for name in names:  # warm both ends
            run_http_client(handles[name].port, 500, body)
        for r in range(rounds):
            for point in points:
                for name in names if r % 2 == 0 else names[::-1]:
                    handle = handles[name]
                    runs[name][point].append(measure(handle.process.pid, point, handle.port, seconds, body, requests))
                    print(f"round {r + 1} {point:12s} {name:8s} {_line(runs[name][point][-1])}", flush=True)
    medians = {name: {p: _median(v) for p, v in by_point.items()} for name, by_point in runs.items()}
    ratios = {
        p: {
            "rps": medians["service"][p]["rps"] / medians["floor"][p]["rps"],
            "p50_minus_floor_ms": medians["service"][p]["p50_ms"] - medians["floor"][p]["p50_ms"],
        }
        for p in points
    }
    return {"points": list(points), "medians": medians, "ratios": ratios, "runs": runs, "load_avg": os.getloadavg()}


def _median(values: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(v[key] for v in values) for key in values[0]}


def cpu_ceiling(m: dict[str, float]) -> float | None:
    """Requests/s this machine's CPUs could carry at the measured CPU per request, server and wrk
    together: a point close to it is CPU-bound (None without a wrk figure)."""
    client = m.get("client_cpu_us_per_request")
    if client is None:
        return None
    return (os.cpu_count() or 1) * 1e6 / (m["cpu_us_per_request"] + client)


def _line(m: dict[str, float]) -> str:
    extra = ""
    if "non_2xx" in m:
        extra = (
            f" wrk CPU {m['client_cpu_us_per_request']:5.1f} us/req (CPU-bound at {cpu_ceiling(m):,.0f} req/s)"
            f" non-2xx {m['non_2xx']:.0f} errors {m['socket_errors']:.0f}"
        )
    return (
        f"{m['rps']:9.0f} req/s  p50 {m['p50_ms']:6.3f} ms  p99 {m['p99_ms']:6.2f} ms  "
        f"CPU {m['cpu_us_per_request']:6.1f} us/req{extra}"
    )


def report(result: dict[str, Any]) -> str:
    """The table: each point on the service and the floor, and the ratio."""
    lines = [
        "",
        "| point | server | req/s | p50 ms | p99 ms | CPU µs/request | wrk CPU µs/request "
        "| CPU-bound at req/s | service ÷ floor req/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for point in result["points"]:
        for name in ("service", "floor"):
            m = result["medians"][name][point]
            ratio = f"{result['ratios'][point]['rps']:.2f}×" if name == "service" else ""
            ceiling = cpu_ceiling(m)
            client = "" if ceiling is None else f"{m['client_cpu_us_per_request']:.0f}"
            lines.append(
                f"| {point} | {name} | {m['rps']:,.0f} | {m['p50_ms']:.3f} | {m['p99_ms']:.2f} | "
                f"{m['cpu_us_per_request']:.0f} | {client} | {'' if ceiling is None else f'{ceiling:,.0f}'} | {ratio} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_compare", description=__doc__.split("\n")[0])
    parser.add_argument("--artifacts-dir", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--requests", type=int, default=2000, help="requests per http.client run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "floor_compare.json")
    args = parser.parse_args(argv)
    result = compare(args.artifacts_dir, args.rounds, args.seconds, args.requests)
    print(report(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
