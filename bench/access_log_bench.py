"""What the access log costs: the same server with its access log on and off, same run.

Four servers (``python -m service``, identical but for ``--no-access-log``) are up side by
side, launched in the order on, off, off, on so that start-up order favours neither arm; the
"on" servers write their JSON lines to a file, as a container's stderr would be drained. At
each client count the load visits the four in a rotating order for ``--rounds`` rounds, so
a change in what else runs on the machine hits both arms alike. Reported per point: pooled
throughput per arm, the median of per-round on/off ratios, and the servers' own CPU time per
answered request (from /proc), which swings far less than req/s on a shared machine.

The same run also compares the two servers *within* each arm (on vs on, off vs off): an A/A
figure that no code difference can explain, so it is the noise of the method on this
machine and the yardstick for the A/B figure beside it.

    python -m bench.access_log_bench                  # 16, 64, 256 clients, 6 rounds of 3 s
    python -m bench.access_log_bench --clients 64 --rounds 10
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.drift_bench import process_cpu_s
from bench.report import publish, stamped
from service.observability.logs import ACCESS_FLUSH_S

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "out" / "access_log_bench.json"
TARGET_COST = 0.05
CLIENTS = (16, 64, 256)
# name -> arm; launch order on, off, off, on
SERVERS = {"on-a": "on", "off-a": "off", "off-b": "off", "on-b": "on"}


def _arm(rounds: list[dict[str, Any]]) -> dict[str, float]:
    ok = sum(r["statuses"].get("200", 0) for r in rounds)
    return {
        "rps": ok / sum(r["duration_s"] for r in rounds),
        "cpu_us_per_request": sum(r["server_cpu_s"] for r in rounds) / max(1, ok) * 1e6,
        "p99_ms": statistics.median(r["latency_ms"]["p99"] for r in rounds),
    }


def _costs(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, float]:
    """How much slower ``a`` is than ``b``: pooled req/s, median of per-round ratios, CPU per request."""
    x, y = _arm(a), _arm(b)
    per_round = [ra["rps"] / rb["rps"] for ra, rb in zip(a, b, strict=True)]
    return {
        "rps": 1 - x["rps"] / y["rps"],
        "rps_paired": 1 - statistics.median(per_round),
        "cpu": 1 - y["cpu_us_per_request"] / x["cpu_us_per_request"],
    }


def point_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """A/B (on vs off, both servers of each arm pooled) and A/A (within each arm) for one client count."""
    by_server = {name: [r for r in rounds if r["server"] == name] for name in SERVERS}
    on = [r for name in ("on-a", "on-b") for r in by_server[name]]
    off = [r for name in ("off-a", "off-b") for r in by_server[name]]
    return {
        "arms": {"on": _arm(on), "off": _arm(off)},
        "ab": _costs(on, off),  # round i of on-a against round i of off-a, and so on
        "aa_on": _costs(by_server["on-a"], by_server["on-b"]),
        "aa_off": _costs(by_server["off-a"], by_server["off-b"]),
    }


def overall(points: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Geometric means over the client counts of the slower/faster ratios."""

    def mean_cost(key: str, figure: str) -> float:
        return 1 - statistics.geometric_mean(1 - p[key][figure] for p in points.values())

    return {f"{key}_{figure}": mean_cost(key, figure) for key in ("ab", "aa_on", "aa_off") for figure in ("rps", "cpu")}


def markdown(results: dict[str, Any]) -> str:
    settings = results["settings"]
    lines = [
        f"{settings['rounds']} rounds of {settings['duration_s']:g} s per server and point; 4 servers "
        "(2 with the log on, 2 off). A/A rows: the two servers of one arm against each other.",
        "",
        "| Clients | req/s on / off | A/B cost req/s (pooled / median of rounds) | A/B cost server CPU "
        "| A/A on vs on: req/s / CPU | A/A off vs off: req/s / CPU | p99 ms on / off |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for clients, p in results["points"].items():
        on, off, ab, aon, aoff = p["arms"]["on"], p["arms"]["off"], p["ab"], p["aa_on"], p["aa_off"]
        lines.append(
            f"| {clients} | {on['rps']:,.0f} / {off['rps']:,.0f} | **{ab['rps']:+.1%}** / {ab['rps_paired']:+.1%} "
            f"| **{ab['cpu']:+.1%}** | {aon['rps']:+.1%} / {aon['cpu']:+.1%} | {aoff['rps']:+.1%} / {aoff['cpu']:+.1%} "
            f"| {on['p99_ms']:.2f} / {off['p99_ms']:.2f} |"
        )
    mean = results["overall"]
    lines += [
        "",
        f"Geometric mean over {len(results['points'])} client counts: A/B cost **{mean['ab_rps']:+.1%}** of "
        f"throughput, **{mean['ab_cpu']:+.1%}** of server CPU (target ≤ {TARGET_COST:.0%}); "
        f"A/A (noise of the method): on vs on {mean['aa_on_rps']:+.1%} / {mean['aa_on_cpu']:+.1%}, "
        f"off vs off {mean['aa_off_rps']:+.1%} / {mean['aa_off_cpu']:+.1%}.",
    ]
    if "in_process" in results:
        line = results["in_process"]
        lines.append(
            f"In process, one access line costs {line['all_threads_us']:.1f} µs of CPU (all threads; "
            f"{line['loop_us']:.1f} µs on the event loop) against {results['request_cpu_us']:.0f} µs per "
            f"request at 64 clients: **{line['all_threads_us'] / results['request_cpu_us']:.1%}**."
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from bench.serve_bench import _ints

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts-dir", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--data", type=Path, default=None, help="CSV with a title column [env NEWS_DATA]")
    parser.add_argument("--clients", type=_ints, default=list(CLIENTS), help="client counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per arm and client count (ABBA order)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per round")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up load per server before the rounds")
    parser.add_argument("--engine", choices=("auto", "wrk", "async"), default="auto")
    parser.add_argument("--workers", type=int, default=1, help="wrk threads / async client processes")
    parser.add_argument("--quick", action="store_true", help="smoke run: 64 clients, 2 rounds of 1 s")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.rounds, args.duration, args.warmup = [64], 2, 1.0, 0.5
    args.rounds = max(1, args.rounds)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from bench.loadgen import run_load, single_headline_bodies
    from bench.serve_bench import DEFAULT_DATA, access_log_us_per_line, find_artifacts, read_titles
    from tests.service.live_server import launch_server

    args = parse_args(argv)
    titles = read_titles(args.data or DEFAULT_DATA)
    results: dict[str, Any] = {
        **stamped(),
        "settings": {
            "clients": args.clients,
            "rounds": args.rounds,
            "duration_s": args.duration,
            "engine": args.engine,
        },
        "points": {},
        "rounds": [],
    }
    opts = {"engine": args.engine, "workers": args.workers}
    flags = {"on": (), "off": ("--no-access-log",)}
    with tempfile.TemporaryDirectory(prefix="hc-access-log-bench-") as tmp, contextlib.ExitStack() as stack:
        scratch = Path(tmp)
        artifacts_dir, described = find_artifacts(args.artifacts_dir, titles, scratch)
        results["model"] = described
        bodies = single_headline_bodies(titles, scratch / "single.jsonl")
        print(f"model {described}; {args.rounds} x {args.duration:g} s per server and point", flush=True)
        servers = {
            name: stack.enter_context(launch_server(artifacts_dir, *flags[arm])) for name, arm in SERVERS.items()
        }
        for server in servers.values():
            if args.warmup > 0:
                run_load(server.port, "/predict", bodies, 64, args.warmup, **opts)
        names = list(SERVERS)
        for clients in args.clients:
            rounds = []
            for i in range(args.rounds):
                for name in names[i % 4 :] + names[: i % 4]:  # each server leads once every 4 rounds
                    pid = servers[name].process.pid
                    cpu_before = process_cpu_s(pid)
                    result = run_load(servers[name].port, "/predict", bodies, clients, args.duration, **opts)
                    result.update(server=name, arm=SERVERS[name], clients=clients)
                    result["server_cpu_s"] = process_cpu_s(pid) - cpu_before
                    rounds.append(result)
            point = point_summary(rounds)
            results["points"][str(clients)] = point
            results["rounds"] += rounds
            on, off, ab = point["arms"]["on"], point["arms"]["off"], point["ab"]
            print(
                f"  c={clients:<4} on {on['rps']:>7,.0f} off {off['rps']:>7,.0f} req/s  A/B cost {ab['rps']:+.1%}"
                f" (cpu {ab['cpu']:+.1%})  A/A on {point['aa_on']['rps']:+.1%} off {point['aa_off']['rps']:+.1%}",
                flush=True,
            )
        time.sleep(3 * ACCESS_FLUSH_S)  # the last burst reaches the file
        logged = 0
        for name in ("on-a", "on-b"):
            with servers[name].log_path.open("rb") as log:
                logged += sum(1 for line in log if b'"service.access"' in line and b'"/predict"' in line)
    answered = sum(r["statuses"].get("200", 0) for r in results["rounds"] if r["arm"] == "on")
    results["access_lines_written"] = logged
    if logged < answered:  # every answered request of the "on" arm has its line (warm-up adds more)
        raise SystemExit(f"error: {answered} requests answered but only {logged} access lines written")
    results["in_process"] = access_log_us_per_line()
    at64 = results["points"].get("64") or next(iter(results["points"].values()))
    results["request_cpu_us"] = at64["arms"]["on"]["cpu_us_per_request"]
    results["overall"] = overall(results["points"])
    results["markdown"] = markdown(results)
    return publish(results, args.out)


if __name__ == "__main__":
    main()
