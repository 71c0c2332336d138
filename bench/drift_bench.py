"""What the drift counters cost: the same server with ``--drift-metrics`` on and off, same run.

Two servers (``python -m service``, identical but for the flag) are up side by side; load at
``--clients`` clients alternates between them in an ABBA order for ``--rounds`` rounds, so a
change in what else runs on the machine hits both arms alike. Throughput per arm is the sum
of answered requests over the sum of seconds, and the median of the per-pair ratios (each
"on" round against the "off" round next to it) is reported beside it, being less sensitive
to a burst of outside load. On a shared machine both swing with what else runs; the server's
own CPU time per answered request (from /proc) swings far less, and at 64 clients a server
is CPU-bound, so its throughput is the inverse of that figure. Beside these, the in-process
CPU cost of one batch's counting (``count_encoded`` + ``DriftCollector.observe``) against the
batch's own predict: the figure that does not depend on the machine being quiet.

    python -m bench.drift_bench                    # 64 clients, 10 rounds of 3 s per arm
    python -m bench.drift_bench --rounds 2 --duration 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.proc_stats import tree_cpu_s as process_cpu_s
from bench.report import publish, stamped

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "out" / "drift_bench.json"
TARGET_COST = 0.03
ARMS = {"on": "--drift-metrics", "off": "--no-drift-metrics"}


def counted_texts(url: str) -> float:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        if family.name == "hc_input_texts":
            return float(family.samples[0].value)
    return 0.0


def in_process_cost(artifacts_dir: Path, titles: list[str], batch: int = 64, rounds: int = 300) -> dict[str, float]:
    """CPU microseconds per ``batch``-text predict, and of that batch's counting alone (one thread)."""
    import torch

    from contract.artifact import load_artifact, resolve_version
    from contract.drift import count_encoded
    from service.inference.predictor import Predictor
    from service.observability.drift import DriftCollector

    torch.set_num_threads(1)
    predictor = Predictor(load_artifact(resolve_version(artifacts_dir)), torch.device("cpu"))
    collector = DriftCollector()
    batches = [titles[i : i + batch] for i in range(0, batch * rounds, batch) if i + batch <= len(titles)]
    encoded = [[predictor.encoder.encode(t) for t in b] for b in batches]
    predictions = [predictor.predict(b, observe=False) for b in batches]
    started = time.process_time()
    for b in batches:
        predictor.predict(b, observe=False)
    predict_us = (time.process_time() - started) / len(batches) * 1e6
    started = time.process_time()
    for enc, prediction in zip(encoded, predictions, strict=True):
        counts = count_encoded([ids for ids, _ in enc], [e for _, e in enc])
        collector.observe(counts, prediction.probabilities, prediction.classes)
    count_us = (time.process_time() - started) / len(batches) * 1e6
    return {"batch": batch, "predict_us": predict_us, "count_us": count_us, "share": count_us / predict_us}


def markdown(results: dict[str, Any]) -> str:
    arms, cost, micro = results["arms"], results["cost"], results["in_process"]
    ok = cost <= TARGET_COST
    lines = [
        "| Figure | Value | Target |",
        "|---|---:|---|",
        f"| Throughput at {results['settings']['clients']} clients, counting on / off | "
        f"**{arms['on']['rps']:,.0f} / {arms['off']['rps']:,.0f} req/s** | – |",
        f"| Cost of counting, 1 − on/off (pooled) | **{cost:+.1%}** | ≤ {TARGET_COST:.0%} {'✅' if ok else '❌'} |",
        f"| Cost of counting, 1 − median of paired on/off rounds | {results['cost_paired']:+.1%} | – |",
        f"| Server CPU per request, counting on / off | {arms['on']['server_cpu_us_per_request']:,.0f} / "
        f"{arms['off']['server_cpu_us_per_request']:,.0f} µs (**{results['cost_cpu']:+.1%}**) | ≤ {TARGET_COST:.0%} "
        f"{'✅' if results['cost_cpu'] <= TARGET_COST else '❌'} |",
        f"| In process: counting one {micro['batch']}-text batch / its predict | "
        f"{micro['count_us']:.0f} µs / {micro['predict_us']:,.0f} µs ({micro['share']:.2%}) | – |",
        "",
        "| Round | Arm | req/s | server CPU µs / request | p50 ms | p99 ms | Statuses |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for i, r in enumerate(results["rounds"]):
        statuses = " ".join(f"{k}:{v}" for k, v in r["statuses"].items())
        cpu_us = r["server_cpu_s"] / max(1, r["statuses"].get("200", 0)) * 1e6
        lines.append(
            f"| {i // 2 + 1} | {r['arm']} | {r['rps']:,.0f} | {cpu_us:,.0f} "
            f"| {r['latency_ms']['p50']:.2f} "
            f"| {r['latency_ms']['p99']:.2f} | {statuses} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts-dir", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--data", type=Path, default=None, help="CSV with a title column [env NEWS_DATA]")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10, help="rounds per arm (ABBA order)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per round")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up load per server before the rounds")
    parser.add_argument("--engine", choices=("auto", "wrk", "async"), default="auto")
    parser.add_argument("--workers", type=int, default=2, help="wrk threads / async client processes")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2 s")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 2, 2.0
    args.rounds = max(1, args.rounds)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from bench.loadgen import run_load, single_headline_bodies
    from bench.serve_bench import DEFAULT_DATA, find_artifacts, read_titles
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
            "server": "defaults except --no-access-log",
        },
        "rounds": [],
    }
    opts = {"engine": args.engine, "workers": args.workers}
    with tempfile.TemporaryDirectory(prefix="hc-drift-bench-") as tmp:
        scratch = Path(tmp)
        artifacts_dir, described = find_artifacts(args.artifacts_dir, titles, scratch)
        results["model"] = described
        bodies = single_headline_bodies(titles, scratch / "single.jsonl")
        print(f"model {described}; {args.clients} clients, {args.rounds} x {args.duration:g} s per arm", flush=True)
        with (
            launch_server(artifacts_dir, ARMS["on"], "--no-access-log") as on,
            launch_server(artifacts_dir, ARMS["off"], "--no-access-log") as off,
        ):
            servers = {"on": on, "off": off}
            for server in servers.values():
                if args.warmup > 0:
                    run_load(server.port, "/predict", bodies, args.clients, args.warmup, **opts)
            order = [arm for i in range(args.rounds) for arm in (("on", "off") if i % 2 == 0 else ("off", "on"))]
            for arm in order:
                pid = servers[arm].process.pid
                cpu_before = process_cpu_s(pid)
                result = run_load(servers[arm].port, "/predict", bodies, args.clients, args.duration, **opts)
                result["arm"] = arm
                result["server_cpu_s"] = process_cpu_s(pid) - cpu_before
                results["rounds"].append(result)
                print(f"  {arm:<3} {result['rps']:>8,.0f} req/s  p99 {result['latency_ms']['p99']:.2f} ms", flush=True)
            results["counted_texts"] = {arm: counted_texts(s.url) for arm, s in servers.items()}
        results["in_process"] = in_process_cost(artifacts_dir, titles)
    arms = {}
    for arm in ARMS:
        rounds = [r for r in results["rounds"] if r["arm"] == arm]
        ok = sum(r["statuses"].get("200", 0) for r in rounds)
        arms[arm] = {"requests": ok, "seconds": sum(r["duration_s"] for r in rounds)}
        arms[arm]["rps"] = ok / arms[arm]["seconds"]
        arms[arm]["server_cpu_us_per_request"] = sum(r["server_cpu_s"] for r in rounds) / ok * 1e6
    results["arms"] = arms
    results["cost"] = 1 - arms["on"]["rps"] / arms["off"]["rps"]
    results["cost_cpu"] = arms["on"]["server_cpu_us_per_request"] / arms["off"]["server_cpu_us_per_request"] - 1
    rounds = results["rounds"]
    pairs = [(a, b) if a["arm"] == "on" else (b, a) for a, b in zip(rounds[::2], rounds[1::2], strict=True)]
    results["cost_paired"] = 1 - statistics.median(on["rps"] / off["rps"] for on, off in pairs)
    if results["counted_texts"]["on"] <= 0 or results["counted_texts"]["off"] != 0:
        raise SystemExit(f"error: counters did not behave as configured: {results['counted_texts']}")
    results["markdown"] = markdown(results)
    return publish(results, args.out)


if __name__ == "__main__":
    main()
