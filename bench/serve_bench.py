"""Serving benchmark: the real server (``python -m service`` subprocess) under closed-loop load.

Runs, each point for ``--duration`` seconds after a ``--warmup`` second warm-up load:

1. ``GET /health/live`` (the HTTP floor) and ``POST /predict`` with one real headline at 1, 16,
   64 and 256 clients, with batching off (``--max-batch-size 1``) and on (defaults), plus a
   ``max_batch_size x max_wait_ms`` sweep at 64 clients;
2. ``POST /predict`` with 256 headlines per request (headlines/s) against the model's own
   batched predict in this process on one thread;
3. 512 clients against a 64-text queue: status counts, connection errors, server RSS.

Prints ratios first, then the full table and the target checks; writes
``bench/out/serve_bench.json`` and ``bench/plots/serve_throughput_p99.png``.

    python -m bench.serve_bench                          # artifacts/ (newest valid version)
    python -m bench.serve_bench --duration 2 --quick     # a short smoke run
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("NEWS_DATA", ROOT.parent / "shared" / "data" / "news_10k.csv"))
DEFAULT_OUT = ROOT / "bench" / "out" / "serve_bench.json"
DEFAULT_PLOT = ROOT / "bench" / "plots" / "serve_throughput_p99.png"

CONCURRENCY = (1, 16, 64, 256)
SWEEP_BATCH = (16, 64, 128)
SWEEP_WAIT_MS = (0.5, 2.0, 5.0)
TEXTS_PER_REQUEST = 256
OVERLOAD_CLIENTS = 512
OVERLOAD_QUEUE = 64

TARGETS = {
    "batching_vs_off_64": 3.0,
    "predict_vs_live_64": 0.40,
    "p99_64_ms": 50.0,
    "p50_1_ms": 1.5,
    "texts_headlines_per_s": 10_000.0,
    "rss_growth": 0.10,
}


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def read_titles(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as fh:
        titles = [row["title"].strip() for row in csv.DictReader(fh) if row.get("title", "").strip()]
    if not titles:
        raise SystemExit(f"error: no titles in {path}")
    return titles


def find_artifacts(artifacts_dir: Path, titles: list[str], scratch: Path) -> tuple[Path, str]:
    """``artifacts_dir`` when it holds a valid version; else a default-size model with random weights.

    Random weights cost exactly what trained ones do (same architecture, same vocabulary
    size), so the timing stays meaningful; the JSON says which one was used.
    """
    from contract.artifact import ArtifactError, resolve_version

    try:
        folder = resolve_version(artifacts_dir)
        return artifacts_dir, f"{folder.name} (from {artifacts_dir})"
    except ArtifactError as exc:
        print(f"note: {exc}; benchmarking a default-size model with random weights instead", flush=True)
    import torch

    from contract.artifact import write_artifact
    from contract.model import ModelConfig, TextClassifier
    from contract.text import LabelEncoder, Normalizer, PreprocessSettings, Vocabulary

    pre = PreprocessSettings(stopwords=("the", "a", "an", "of", "to", "in", "on", "for", "and", "as", "at"))
    normalizer = Normalizer(pre)
    vocab = Vocabulary.fit((normalizer.tokens(t) for t in titles), min_freq=1)
    torch.manual_seed(0)
    model = TextClassifier(ModelConfig(vocab_size=len(vocab), num_classes=4)).eval()
    root = scratch / "artifacts"
    folder = write_artifact(
        root,
        model=model,
        vocab=vocab,
        labels=LabelEncoder(["Business", "Sci/Tech", "Sports", "World"]),
        preprocessing=pre,
        metrics={},
        train_config={"note": "random weights, benchmark only"},
        version="bench-random",
    )
    return root, f"{folder.name} (default-size GRU, random weights, vocab {len(vocab)})"


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def in_process_headlines_per_s(artifacts_dir: Path, titles: list[str], seconds: float) -> dict[str, Any]:
    """The service's Predictor (encode + length groups + forward) on 256-headline batches, one thread."""
    import torch

    from contract.artifact import load_artifact, resolve_version
    from service.predictor import Predictor

    torch.set_num_threads(1)
    predictor = Predictor(load_artifact(resolve_version(artifacts_dir)), torch.device("cpu"))
    batches = [titles[i : i + TEXTS_PER_REQUEST] for i in range(0, len(titles) - TEXTS_PER_REQUEST, TEXTS_PER_REQUEST)]
    predictor.predict(batches[0])  # warm-up
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        predictor.predict(batches[done % len(batches)])
        done += 1
    elapsed = time.perf_counter() - started
    return {"batches": done, "seconds": round(elapsed, 3), "headlines_per_s": done * TEXTS_PER_REQUEST / elapsed}


class Bench:
    def __init__(self, args: argparse.Namespace, artifacts_dir: Path, scratch: Path, titles: list[str]) -> None:
        from bench.loadgen import write_bodies

        self.args = args
        self.artifacts_dir = artifacts_dir
        rng = random.Random(0)
        sample = rng.sample(titles, min(len(titles), 2000))
        self.single = write_bodies(({"text": t} for t in sample), scratch / "single.jsonl")
        shuffled = titles[:]
        rng.shuffle(shuffled)
        groups = [shuffled[i : i + TEXTS_PER_REQUEST] for i in range(0, len(shuffled), TEXTS_PER_REQUEST)]
        groups = [g for g in groups if len(g) == TEXTS_PER_REQUEST][:40]
        self.multi = write_bodies(({"texts": g} for g in groups), scratch / "texts.jsonl")
        self.points: list[dict[str, Any]] = []

    def server_args(self, config: dict[str, Any]) -> list[str]:
        extra = [f"--{k.replace('_', '-')}={v}" for k, v in config.items()]
        return extra + ([] if self.args.access_log else ["--no-access-log"])

    def load(self, server: Any, path: str, bodies: Path | None, clients: int) -> dict[str, Any]:
        from bench.loadgen import run_load

        opts = {"engine": self.args.engine, "workers": self.args.workers}
        if self.args.warmup > 0:
            run_load(server.port, path, bodies, clients, self.args.warmup, **opts)
        return run_load(server.port, path, bodies, clients, self.args.duration, **opts)

    def record(self, group: str, config: dict[str, Any], result: dict[str, Any], **extra: Any) -> dict[str, Any]:
        point = {"group": group, "config": config, **result, **extra}
        self.points.append(point)
        lat = result["latency_ms"]
        print(
            f"  {group:<10} {json.dumps(config):<44} c={result['concurrency']:<4} {result['rps']:>9.0f} req/s"
            f"  p50 {lat['p50']:7.2f}  p99 {lat['p99']:7.2f} ms  {result['statuses']} {_errors(result) or ''}",
            flush=True,
        )
        return point

    def run_curves(self) -> None:
        from tests.service.live_server import launch_server

        clients = self.args.concurrency
        configs: list[tuple[str, dict[str, Any], str, Path | None]] = [
            ("live", {}, "/health/live", None),
            ("off", {"max_batch_size": 1}, "/predict", self.single),
            ("default", {}, "/predict", self.single),
        ]
        for group, config, path, bodies in configs:
            print(f"[{group}] {path} {config or 'server defaults'}", flush=True)
            with launch_server(self.artifacts_dir, *self.server_args(config)) as server:
                for c in clients:
                    self.record(group, config, self.load(server, path, bodies, c))
        for batch in self.args.sweep_batch:
            for wait in self.args.sweep_wait:
                config = {"max_batch_size": batch, "max_wait_ms": wait}
                with launch_server(self.artifacts_dir, *self.server_args(config)) as server:
                    self.record("sweep", config, self.load(server, "/predict", self.single, self.args.sweep_clients))

    def run_texts(self) -> None:
        from tests.service.live_server import launch_server

        config = {"max_queue_size": 4096}
        print(f"[texts] /predict with {TEXTS_PER_REQUEST} headlines per request", flush=True)
        with launch_server(self.artifacts_dir, *self.server_args(config)) as server:
            for c in self.args.texts_clients:
                result = self.load(server, "/predict", self.multi, c)
                ok = result["statuses"].get("200", 0)
                self.record("texts", config, result, headlines_per_s=ok * TEXTS_PER_REQUEST / result["duration_s"])

    def run_overload(self) -> dict[str, Any]:
        from tests.service.live_server import launch_server

        # A request may not hold more texts than the queue (refused at startup otherwise).
        config = {"max_queue_size": OVERLOAD_QUEUE, "max_texts_per_request": OVERLOAD_QUEUE}
        print(f"[overload] {OVERLOAD_CLIENTS} clients, queue {OVERLOAD_QUEUE}", flush=True)
        with launch_server(self.artifacts_dir, *self.server_args(config)) as server:
            pid = server.process.pid
            # RSS after a short warm load, so allocator and caches have grown to their working size.
            self.load(server, "/predict", self.single, 64)
            before = rss_kb(pid)
            result = self.load(server, "/predict", self.single, OVERLOAD_CLIENTS)
            after = rss_kb(pid)
            alive = server.process.poll() is None
        return self.record(
            "overload", config, result, rss_before_kb=before, rss_after_kb=after, server_alive_after=alive
        )


def _errors(result: dict[str, Any]) -> int:
    return sum(result["errors"].values())


def _find(points: list[dict[str, Any]], group: str, clients: int) -> dict[str, Any] | None:
    return next((p for p in points if p["group"] == group and p["concurrency"] == clients), None)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def analyse(results: dict[str, Any]) -> dict[str, Any]:
    """Headline ratios and target checks (None where a part was skipped)."""
    points = results["points"]
    live64, off64, on64 = (_find(points, g, 64) for g in ("live", "off", "default"))
    on1 = _find(points, "default", 1)
    texts = max((p for p in points if p["group"] == "texts"), key=lambda p: p["headlines_per_s"], default=None)
    overload = next((p for p in points if p["group"] == "overload"), None)
    in_proc = results.get("in_process")
    ratios = {
        "batching_vs_off_64": _ratio(on64 and on64["rps"], off64 and off64["rps"]),
        "predict_vs_live_64": _ratio(on64 and on64["rps"], live64 and live64["rps"]),
        "p99_64_ms": on64 and on64["latency_ms"]["p99"],
        "p50_1_ms": on1 and on1["latency_ms"]["p50"],
        "texts_headlines_per_s": texts and texts["headlines_per_s"],
        "texts_vs_in_process": _ratio(texts and texts["headlines_per_s"], in_proc and in_proc["headlines_per_s"]),
    }
    checks: list[dict[str, Any]] = []

    def check(name: str, value: Any, target: str, ok: bool | None) -> None:
        checks.append({"name": name, "value": value, "target": target, "pass": ok})

    def at_least(name: str, key: str) -> None:
        value = ratios[key]
        check(name, value, f">= {TARGETS[key]:g}", None if value is None else value >= TARGETS[key])

    def at_most(name: str, key: str) -> None:
        value = ratios[key]
        check(name, value, f"<= {TARGETS[key]:g}", None if value is None else value <= TARGETS[key])

    at_least("64 clients: batching / batching off throughput", "batching_vs_off_64")
    at_least("64 clients: /predict / /health/live throughput", "predict_vs_live_64")
    at_most("64 clients: p99 ms", "p99_64_ms")
    at_most("1 client: p50 ms", "p50_1_ms")
    at_least("texts: headlines/s", "texts_headlines_per_s")
    if overload is not None:
        others = {k: v for k, v in overload["statuses"].items() if k not in ("200", "503")}
        check("512 clients: only 200/503", overload["statuses"], "no other status", not others)
        check("512 clients: connection errors", _errors(overload), "0", _errors(overload) == 0)
        check(
            "512 clients: 503 without Retry-After",
            overload["missing_retry_after"],
            "0",
            overload["missing_retry_after"] == 0,
        )
        growth = overload["rss_after_kb"] / overload["rss_before_kb"] - 1 if overload["rss_before_kb"] else None
        ratios["overload_rss_growth"] = growth
        check(
            "512 clients: RSS growth",
            growth,
            f"< {TARGETS['rss_growth']:.0%}",
            None if growth is None else growth < TARGETS["rss_growth"],
        )
    return {"ratios": ratios, "checks": checks}


def _fmt(value: Any, spec: str = ".2f") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def markdown(results: dict[str, Any]) -> str:
    ratios, checks = results["analysis"]["ratios"], results["analysis"]["checks"]
    in_proc = results.get("in_process")
    lines = [
        "| Ratio / figure | Value |",
        "|---|---|",
        f"| Throughput, batching on / off, 64 clients | **{_fmt(ratios['batching_vs_off_64'])}x** |",
        f"| Throughput, /predict / /health/live, 64 clients | **{_fmt(ratios['predict_vs_live_64'])}** |",
        f"| p99 latency, batching on, 64 clients | {_fmt(ratios['p99_64_ms'])} ms |",
        f"| p50 latency, 1 client | {_fmt(ratios['p50_1_ms'], '.3f')} ms |",
        f"| Headlines/s, `texts` x{TEXTS_PER_REQUEST} over HTTP | {_fmt(ratios['texts_headlines_per_s'], ',.0f')} |",
        f"| Headlines/s, in-process predict, 1 thread | {_fmt(in_proc and in_proc['headlines_per_s'], ',.0f')} |",
        f"| HTTP / in-process headlines/s | {_fmt(ratios['texts_vs_in_process'])} |",
        "",
        "| Group | Server config | Clients | req/s | p50 ms | p95 ms | p99 ms | Statuses | Conn. errors |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for p in results["points"]:
        lat = p["latency_ms"]
        cfg = ", ".join(f"{k}={v}" for k, v in p["config"].items()) or "defaults"
        statuses = " ".join(f"{k}:{v}" for k, v in p["statuses"].items())
        lines.append(
            f"| {p['group']} | {cfg} | {p['concurrency']} | {p['rps']:,.0f} | {lat['p50']:.2f} | {lat['p95']:.2f} "
            f"| {lat['p99']:.2f} | {statuses} | {_errors(p)} |"
        )
    lines += ["", "| Target | Value | Goal | Result |", "|---|---|---|---|"]
    for c in checks:
        verdict = {True: "pass", False: "**FAIL**", None: "skipped"}[c["pass"]]
        lines.append(f"| {c['name']} | {_fmt(c['value'])} | {c['target']} | {verdict} |")
    overload = next((p for p in results["points"] if p["group"] == "overload"), None)
    if overload is not None:
        lines += [
            "",
            f"Overload: server RSS {overload['rss_before_kb'] / 1024:.1f} MiB before, "
            f"{overload['rss_after_kb'] / 1024:.1f} MiB after {OVERLOAD_CLIENTS} clients.",
        ]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib not installed; no plot")
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for group, style in (("live", "k--o"), ("off", "r-o"), ("default", "b-o")):
        pts = [p for p in results["points"] if p["group"] == group]
        if pts:
            ax.plot([p["rps"] for p in pts], [p["latency_ms"]["p99"] for p in pts], style, label=group)
            for p in pts:
                ax.annotate(str(p["concurrency"]), (p["rps"], p["latency_ms"]["p99"]), fontsize=7)
    sweep = [p for p in results["points"] if p["group"] == "sweep"]
    if sweep:
        ax.scatter(
            [p["rps"] for p in sweep],
            [p["latency_ms"]["p99"] for p in sweep],
            c="g",
            marker="x",
            label=f"sweep ({sweep[0]['concurrency']} clients)",
        )
        for p in sweep:
            label = f"{p['config']['max_batch_size']}/{p['config']['max_wait_ms']:g}"
            ax.annotate(label, (p["rps"], p["latency_ms"]["p99"]), fontsize=7, color="g")
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("p99 latency (ms, log)")
    ax.set_yscale("log")
    ax.set_title("POST /predict: throughput vs p99 (labels: clients; sweep: batch/wait ms)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--artifacts-dir",
        type=Path,
        default=ROOT / "artifacts",
        help="served artifacts; when none is valid a random-weight model is built (default: %(default)s)",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CSV with a title column [env NEWS_DATA]")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load point (default %(default)s)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up load seconds before each point")
    parser.add_argument(
        "--engine",
        choices=("auto", "wrk", "async"),
        default="auto",
        help="load generator: wrk when installed, else the asyncio client",
    )
    parser.add_argument("--workers", type=int, default=2, help="wrk threads / async client processes")
    parser.add_argument("--concurrency", type=_ints, default=list(CONCURRENCY), help="clients, comma-separated")
    parser.add_argument("--sweep-batch", type=_ints, default=list(SWEEP_BATCH), help="max_batch_size values")
    parser.add_argument("--sweep-wait", type=_floats, default=list(SWEEP_WAIT_MS), help="max_wait_ms values")
    parser.add_argument("--sweep-clients", type=int, default=64)
    parser.add_argument("--texts-clients", type=_ints, default=[1, 4], help="clients for the 256-headline point")
    parser.add_argument("--in-process-s", type=float, default=5.0, help="seconds of in-process predict timing")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--skip-overload", action="store_true")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2 s points, no warm-up, clients 1,64, a 2-point sweep"
    )
    parser.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="server writes its per-request JSON log (its default; to a temp file)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 2.0)
        args.warmup = 0.0
        args.in_process_s = min(args.in_process_s, 2.0)
        args.concurrency = [1, 64]
        args.sweep_batch, args.sweep_wait = [16, 128], [2.0]
        args.texts_clients = [4]
    if args.skip_sweep:
        args.sweep_batch = []
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from bench.loadgen import wrk_available

    args = parse_args(argv)
    titles = read_titles(args.data)
    engine = args.engine if args.engine != "auto" else ("wrk" if wrk_available() else "async")
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "note": "server, load generator and benchmark share the machine's CPUs; nothing is pinned",
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "engine": engine,
            "workers": args.workers,
            "access_log": args.access_log,
            "data": str(args.data),
        },
    }
    with tempfile.TemporaryDirectory(prefix="hc-serve-bench-") as tmp:
        scratch = Path(tmp)
        artifacts_dir, described = find_artifacts(args.artifacts_dir, titles, scratch)
        results["model"] = described
        print(f"model {described}; load generator {engine}; {args.duration:g} s per point", flush=True)
        bench = Bench(args, artifacts_dir, scratch, titles)
        bench.run_curves()
        bench.run_texts()
        results["in_process"] = in_process_headlines_per_s(artifacts_dir, titles, args.in_process_s)
        print(f"  in-process predict: {results['in_process']['headlines_per_s']:,.0f} headlines/s", flush=True)
        if not args.skip_overload:
            bench.run_overload()
        results["points"] = bench.points
    results["analysis"] = analyse(results)
    results["markdown"] = markdown(results)
    plotted = plot(results, args.plot)
    results["plot"] = (
        str(plotted.relative_to(ROOT)) if plotted and plotted.is_relative_to(ROOT) else plotted and str(plotted)
    )
    print()
    print(f"machine: {results['machine']}  ({results['note']})")
    print(results["markdown"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"wrote {args.out}" + (f" and {plotted}" if plotted else ""))
    return results


if __name__ == "__main__":
    main()
