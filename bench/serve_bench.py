"""Serving benchmark: the real server (``python -m service`` subprocesses) under closed-loop load.

Every server of a comparison is started up front; the load then visits them in turn, a
short slice each, for ``--rounds`` rounds, and each point is the median of its slices. The
machine's other work therefore hits every server alike, so the ratios of one run hold even
on a busy machine (absolute req/s do not). Each slice also reads the server's CPU time from
/proc: microseconds of CPU (all threads, and the event-loop thread alone) per request.

0. the service beside the HTTP stack's own floor (bench/floor_compare.py: a bare uvicorn app,
   wrk at 64/256/1 connections and a plain http.client keep-alive loop; ``--skip-floor``);
1. ``POST /predict`` with one real headline at 1, 8, 16, 32, 64, 128 and 256 clients against:
   this service with its defaults (access log on), with ``--no-access-log``, with batching
   off (``--max-batch-size 1``), and the reference FastAPI + 2 ms micro-batcher in
   ``bench/reference_batcher.py``; plus ``GET /health/live`` on a separate server with the defaults;
2. ``POST /predict`` with 256 headlines per request (headlines/s), interleaved with the
   model's own batched predict in this process on one thread;
3. N replicas (``--replicas``, each ``--torch-threads 1``) against one server, 64 clients in all;
4. a ``max_batch_size x max_wait_ms`` sweep at 64 clients and 512 clients against a 64-text
   queue (status counts, connection errors, server RSS).

Prints ratios first, then the full table and the target checks; writes
``bench/out/serve_bench.json`` and ``bench/plots/serve_throughput_p99.png``.

    python -m bench.serve_bench                          # artifacts/ (newest valid version)
    python -m bench.serve_bench --quick                  # a short smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.proc_stats import cpu_s, rss_kb, tree_rss_kb

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("NEWS_DATA", ROOT.parent / "shared" / "data" / "news_10k.csv"))
DEFAULT_OUT = ROOT / "bench" / "out" / "serve_bench.json"
DEFAULT_PLOT = ROOT / "bench" / "plots" / "serve_throughput_p99.png"

CONCURRENCY = (1, 8, 16, 32, 64, 128, 256)
SWEEP_BATCH = (16, 64, 128)
SWEEP_WAIT_MS = (0.5, 2.0, 5.0)
TEXTS_PER_REQUEST = 256
OVERLOAD_CLIENTS = 512
OVERLOAD_QUEUE = 64
# name -> server flags (None: the reference batcher). "live" is GET /health/live on a separate
# server with the default flags: run on "default" itself, its slices left "default" (access log
# on) paying more CPU per /predict request than "nolog", which made the access-log comparison
# unlike for like.
SERVERS: dict[str, list[str] | None] = {
    "default": [],
    "nolog": ["--no-access-log"],
    "off": ["--max-batch-size=1"],
    "reference": None,
}

TARGETS = {
    "predict_vs_live_64": 0.65,
    "predict_vs_reference_64": 1.5,
    "p99_64_ms": 30.0,
    "p50_1_ms": 1.0,
    "p99_1_ms": 3.0,
    "access_log_cost": 0.05,
    "texts_vs_in_process": 0.9,
    "batching_vs_off_min": 1.0,
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


class Handle:
    """A started server: port and process (either ``python -m service`` or the reference)."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log


@contextlib.contextmanager
def launch(
    artifacts_dir: Path,
    flags: list[str] | None,
    scratch: Path,
    name: str,
    cwd: Path = ROOT,
    module: str | None = None,
) -> Iterator[Handle]:
    """``python -m service`` (of the checkout at ``cwd``) with ``flags``, or (``flags is None``) the
    reference batcher, or (``module``) ``python -m module --port PORT``; waits for ready."""
    import httpx

    from tests.service.live_server import free_port

    port = free_port()
    log = scratch / f"{name}-{port}.log"
    if module is not None:
        cmd = [sys.executable, "-m", module, "--port", str(port)]
    elif flags is None:
        cmd = [sys.executable, "-m", "bench.reference_batcher", str(artifacts_dir), str(port)]
    else:
        cmd = [sys.executable, "-m", "service", "--artifacts-dir", str(artifacts_dir), f"--port={port}", *flags]
    with log.open("wb") as fh:
        process = subprocess.Popen(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not ready: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield Handle(process, port, log)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def in_process_rate(predictor: Any, batches: list[list[str]], seconds: float) -> tuple[float, float]:
    """Headlines/s of the service's Predictor (encode + length groups + forward) on 256-headline batches,
    per wall-clock second and per CPU second of this thread."""
    done = 0
    started, cpu_started = time.perf_counter(), time.thread_time()
    while time.perf_counter() - started < seconds:
        predictor.predict(batches[done % len(batches)])
        done += 1
    headlines = done * TEXTS_PER_REQUEST
    return headlines / (time.perf_counter() - started), headlines / max(1e-9, time.thread_time() - cpu_started)


def access_log_us_per_line(lines: int = 20_000, burst: int = 40) -> dict[str, float]:
    """CPU microseconds one access-log line costs the server (the event-loop thread, and all threads),
    measured in this process with the server's own logging set-up writing to /dev/null.

    Lines are written on an event loop in bursts of ``burst`` (about what 4,000 requests/s
    give per 10 ms flush), each followed by a 10 ms pause in which the flush timer fires.
    """
    import asyncio

    from service.observability import logs

    async def write_all(write: logs.AccessWriter) -> float:
        loop_cpu = 0.0
        for start in range(0, lines, burst):
            thread = time.thread_time()
            for i in range(start, min(lines, start + burst)):
                write("POST", "/predict", 200, 1.234, f"{i:032x}")
            loop_cpu += time.thread_time() - thread
            await asyncio.sleep(logs.ACCESS_FLUSH_S)
        return loop_cpu

    with open(os.devnull, "w") as sink:
        baseline = time.process_time()
        asyncio.run(write_all(lambda *_: None))  # the same loop with the log off: its sleeps cost CPU too
        idle = time.process_time() - baseline
        listener = logs.setup_logging("info", sink)
        try:
            write = logs.access_writer()
            process = time.process_time()
            caller = asyncio.run(write_all(write))
            listener.stop()
            total = time.process_time() - process - idle
        finally:
            logs.logging.getLogger("service").handlers.clear()
    return {"loop_us": caller / lines * 1e6, "all_threads_us": total / lines * 1e6}


def median_point(group: str, config: dict[str, Any], slices: list[dict[str, Any]]) -> dict[str, Any]:
    """One point from its slices: medians of throughput and latency percentiles, summed counts."""
    med = statistics.median
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    for r in slices:
        for k, v in r["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    point = {
        "group": group,
        "config": config,
        "concurrency": slices[0]["concurrency"],
        "rps": med(r["rps"] for r in slices),
        "rps_slices": [round(r["rps"]) for r in slices],
        "latency_ms": {k: med(r["latency_ms"][k] for r in slices) for k in ("p50", "p95", "p99", "max", "mean")},
        "statuses": statuses,
        "errors": errors,
        "missing_retry_after": sum(r.get("missing_retry_after", 0) for r in slices),
        "duration_s": sum(r["duration_s"] for r in slices),
    }
    if "cpu_us" in slices[0]:
        point["cpu_us_per_request"] = med(r["cpu_us"] for r in slices)
        point["loop_us_per_request"] = med(r["loop_us"] for r in slices)
    return point


class Bench:
    def __init__(self, args: argparse.Namespace, artifacts_dir: Path, scratch: Path, titles: list[str]) -> None:
        from bench.loadgen import text_groups, write_bodies

        self.args = args
        self.artifacts_dir = artifacts_dir
        self.scratch = scratch
        rng = random.Random(0)
        sample = rng.sample(titles, min(len(titles), 2000))
        self.single = write_bodies(({"text": t} for t in sample), scratch / "single.jsonl")
        shuffled = titles[:]
        rng.shuffle(shuffled)
        self.text_groups = text_groups(shuffled, TEXTS_PER_REQUEST)
        self.multi = write_bodies(({"texts": g} for g in self.text_groups), scratch / "texts.jsonl")
        self.points: list[dict[str, Any]] = []

    def flags(self, flags: list[str] | None) -> list[str] | None:
        if flags is None or self.args.access_log:
            return flags
        return [*flags, "--no-access-log"] if "--no-access-log" not in flags else flags

    def slice(self, server: Handle, path: str, bodies: Path | None, clients: int, seconds: float) -> dict[str, Any]:
        """One load slice, with the server's CPU time per answered request."""
        from bench.loadgen import run_load

        before = cpu_s(server.process.pid)
        result = run_load(
            server.port, path, bodies, clients, seconds, engine=self.args.engine, workers=self.args.workers
        )
        after = cpu_s(server.process.pid)
        answered = max(1, sum(result["statuses"].values()))
        result["cpu_us"] = (after[0] - before[0]) / answered * 1e6
        result["loop_us"] = (after[1] - before[1]) / answered * 1e6
        return result

    def record(self, point: dict[str, Any], **extra: Any) -> dict[str, Any]:
        point.update(extra)
        self.points.append(point)
        lat = point["latency_ms"]
        cpu = point.get("cpu_us_per_request")
        print(
            f"  {point['group']:<10} c={point['concurrency']:<4} {point['rps']:>8.0f} req/s {point['rps_slices']}"
            f"  p50 {lat['p50']:7.2f}  p99 {lat['p99']:7.2f} ms"
            + (f"  cpu {cpu:5.0f} us/req (loop {point['loop_us_per_request']:4.0f})" if cpu is not None else "")
            + f"  {point['statuses']} {_errors(point) or ''}",
            flush=True,
        )
        return point

    def run_curves(self) -> None:
        """Every server up at once; each client count visits them in turn, ``rounds`` times."""
        args = self.args
        with contextlib.ExitStack() as stack:
            servers = {
                name: stack.enter_context(launch(self.artifacts_dir, self.flags(flags), self.scratch, name))
                for name, flags in SERVERS.items()
            }
            live = stack.enter_context(launch(self.artifacts_dir, self.flags([]), self.scratch, "live"))
            targets = [("live", live, "/health/live", None)] + [
                (name, server, "/predict", self.single) for name, server in servers.items()
            ]
            if args.warmup > 0:
                for _, server, path, bodies in targets:
                    self.slice(server, path, bodies, 64, args.warmup)
            for clients in args.concurrency:
                print(f"[{clients} clients] {args.rounds} rounds x {len(targets)} servers", flush=True)
                slices: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in targets}
                for _ in range(args.rounds):
                    for name, server, path, bodies in targets:
                        slices[name].append(self.slice(server, path, bodies, clients, args.duration))
                for name, _, path, _ in targets:
                    config = {"server": name, "path": path}
                    self.record(median_point(name, config, slices[name]))

    def run_texts(self) -> dict[str, Any]:
        """256-headline requests over HTTP, interleaved with the same batches predicted in this process."""
        import torch

        from contract.artifact import load_artifact, resolve_version
        from service.inference.predictor import Predictor

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        predictor = Predictor(load_artifact(resolve_version(self.artifacts_dir)), torch.device("cpu"))
        predictor.predict(self.text_groups[0])
        flags = self.flags(["--max-queue-size=4096"])
        assert flags is not None
        # The default (model process) and, beside it, the model in a thread of the HTTP process.
        arms = {"texts": ({"max_queue_size": 4096}, flags)}
        arms["texts_thread"] = ({"max_queue_size": 4096, "model_process": False}, [*flags, "--no-model-process"])
        print(f"[texts] /predict with {TEXTS_PER_REQUEST} headlines per request vs in-process", flush=True)
        rates: list[tuple[float, float]] = []
        slices: dict[tuple[str, int], list[dict[str, Any]]] = {
            (group, c): [] for group in arms for c in self.args.texts_clients
        }
        with contextlib.ExitStack() as stack:
            servers = {
                group: stack.enter_context(launch(self.artifacts_dir, arm_flags, self.scratch, group))
                for group, (_, arm_flags) in arms.items()
            }
            for _ in range(self.args.rounds):
                for c in self.args.texts_clients:
                    for group, server in servers.items():
                        slices[group, c].append(self.slice(server, "/predict", self.multi, c, self.args.duration))
                rates.append(in_process_rate(predictor, self.text_groups, self.args.duration))
        torch.set_num_threads(threads)
        for (group, _), results in slices.items():
            point = median_point(group, arms[group][0], results)
            ok = point["statuses"].get("200", 0)
            point["headlines_per_s"] = statistics.median(
                r["statuses"].get("200", 0) * TEXTS_PER_REQUEST / r["duration_s"] for r in results
            )
            self.record(point, ok=ok)
        in_proc = {
            "headlines_per_s": statistics.median(r for r, _ in rates),
            "slices": [round(r) for r, _ in rates],
            "headlines_per_cpu_s": statistics.median(c for _, c in rates),
        }
        print(f"  in-process predict: {in_proc['headlines_per_s']:,.0f} headlines/s {in_proc['slices']}", flush=True)
        return in_proc

    def run_replicas(self) -> None:
        """N replicas (one torch thread each) sharing the clients, against one default server."""
        import concurrent.futures

        n = self.args.replicas
        clients = 64
        print(f"[replicas] {n} x python -m service --torch-threads 1, {clients} clients in all", flush=True)
        with contextlib.ExitStack() as stack:
            one = stack.enter_context(launch(self.artifacts_dir, self.flags([]), self.scratch, "single"))
            replicas = [
                stack.enter_context(
                    launch(self.artifacts_dir, self.flags(["--torch-threads=1"]), self.scratch, f"r{i}")
                )
                for i in range(n)
            ]
            single: list[dict[str, Any]] = []
            combined: list[dict[str, Any]] = []
            for _ in range(self.args.rounds):
                single.append(self.slice(one, "/predict", self.single, clients, self.args.duration))
                with concurrent.futures.ThreadPoolExecutor(n) as pool:
                    parts = list(
                        pool.map(
                            lambda r: self.slice(r, "/predict", self.single, clients // n, self.args.duration),
                            replicas,
                        )
                    )
                combined.append(
                    {
                        "concurrency": clients,
                        "rps": sum(p["rps"] for p in parts),
                        "latency_ms": {
                            k: max(p["latency_ms"][k] for p in parts) for k in ("p50", "p95", "p99", "max", "mean")
                        },
                        "statuses": {"200": sum(p["statuses"].get("200", 0) for p in parts)},
                        "errors": {k: sum(p["errors"].get(k, 0) for p in parts) for k in parts[0]["errors"]},
                        "duration_s": max(p["duration_s"] for p in parts),
                        "cpu_us": statistics.mean(p["cpu_us"] for p in parts),
                        "loop_us": statistics.mean(p["loop_us"] for p in parts),
                    }
                )
        self.record(median_point("single", {"server": "default"}, single))
        self.record(median_point(f"replicas{n}", {"replicas": n, "torch_threads": 1}, combined))

    def run_sweep(self) -> None:
        for batch in self.args.sweep_batch:
            for wait in self.args.sweep_wait:
                config = {"max_batch_size": batch, "max_wait_ms": wait}
                flags = self.flags([f"--max-batch-size={batch}", f"--max-wait-ms={wait}"])
                with launch(self.artifacts_dir, flags, self.scratch, "sweep") as server:
                    result = self.slice(server, "/predict", self.single, self.args.sweep_clients, self.args.duration)
                self.record(median_point("sweep", config, [result]))

    def run_overload(self) -> dict[str, Any]:
        # A request may not hold more texts than the queue (refused at startup otherwise).
        config = {"max_queue_size": OVERLOAD_QUEUE, "max_texts_per_request": OVERLOAD_QUEUE}
        print(f"[overload] {OVERLOAD_CLIENTS} clients, queue {OVERLOAD_QUEUE}", flush=True)
        flags = self.flags([f"--max-queue-size={OVERLOAD_QUEUE}", f"--max-texts-per-request={OVERLOAD_QUEUE}"])
        with launch(self.artifacts_dir, flags, self.scratch, "ov") as s:
            pid = s.process.pid
            # RSS after a short warm load, so allocator and caches have grown to their working size.
            self.slice(s, "/predict", self.single, 64, self.args.duration)
            before = rss_kb(pid)
            result = self.slice(s, "/predict", self.single, OVERLOAD_CLIENTS, self.args.duration)
            after = rss_kb(pid)  # the HTTP process, where request memory lives (the ratio's subject)
            tree_after = tree_rss_kb(pid)  # plus the model process
            alive = s.process.poll() is None
        return self.record(
            median_point("overload", config, [result]),
            rss_before_kb=before,
            rss_after_kb=after,
            rss_with_model_process_after_kb=tree_after,
            server_alive_after=alive,
        )


def _errors(result: dict[str, Any]) -> int:
    return sum(result["errors"].values())


def _find(points: list[dict[str, Any]], group: str, clients: int) -> dict[str, Any] | None:
    return next((p for p in points if p["group"] == group and p["concurrency"] == clients), None)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _mean_cost(pairs: list[tuple[float | None, float | None]]) -> float | None:
    """1 - geometric mean of off/on over several points: one point's CPU figure swings on a busy machine."""
    ratios = [off / on for on, off in pairs if on and off]
    return 1 - statistics.geometric_mean(ratios) if ratios else None


def analyse(results: dict[str, Any]) -> dict[str, Any]:
    """Headline ratios and target checks (None where a part was skipped)."""
    points = results["points"]

    def rps(group: str, clients: int) -> float | None:
        point = _find(points, group, clients)
        return point and point["rps"]

    def lat(group: str, clients: int, q: str) -> float | None:
        point = _find(points, group, clients)
        return point and point["latency_ms"][q]

    def cpu(group: str, clients: int) -> float | None:
        point = _find(points, group, clients)
        return point and point.get("cpu_us_per_request")

    texts = max((p for p in points if p["group"] == "texts"), key=lambda p: p["headlines_per_s"], default=None)
    texts_thread = max(
        (p for p in points if p["group"] == "texts_thread"), key=lambda p: p["headlines_per_s"], default=None
    )
    texts_cpu = min((p["cpu_us_per_request"] for p in points if p["group"] == "texts"), default=None)
    overload = next((p for p in points if p["group"] == "overload"), None)
    in_proc = results.get("in_process")
    nolog64 = rps("nolog", 64)
    sweep_clients = [c for c in results["settings"]["concurrency"] if c >= 8]
    vs_off = [r for c in sweep_clients if (r := _ratio(rps("default", c), rps("off", c))) is not None]
    replicas = next((p for p in points if p["group"].startswith("replicas")), None)
    ratios = {
        "predict_vs_live_64": _ratio(rps("default", 64), rps("live", 64)),
        "predict_vs_reference_64": _ratio(rps("default", 64), rps("reference", 64)),
        "p99_64_ms": lat("default", 64, "p99"),
        "p50_1_ms": lat("default", 1, "p50"),
        "p99_1_ms": lat("default", 1, "p99"),
        "access_log_cost": None if not nolog64 or rps("default", 64) is None else 1 - rps("default", 64) / nolog64,
        "texts_headlines_per_s": texts and texts["headlines_per_s"],
        "texts_vs_in_process": _ratio(texts and texts["headlines_per_s"], in_proc and in_proc["headlines_per_s"]),
        "texts_thread_vs_in_process": _ratio(
            texts_thread and texts_thread["headlines_per_s"], in_proc and in_proc["headlines_per_s"]
        ),
        "batching_vs_off_64": _ratio(rps("default", 64), rps("off", 64)),
        "batching_vs_off_min": min(vs_off) if vs_off else None,
        "replicas_vs_single_64": _ratio(replicas and replicas["rps"], rps("single", 64)),
        # The same comparisons in server CPU time per request (requests per CPU-second): far less
        # sensitive than req/s to whatever else runs on the machine.
        "cpu_predict_vs_live_64": _ratio(cpu("live", 64), cpu("default", 64)),
        "cpu_predict_vs_reference_64": _ratio(cpu("reference", 64), cpu("default", 64)),
        "cpu_access_log_cost_mean": _mean_cost(
            [(cpu("default", c), cpu("nolog", c)) for c in results["settings"]["concurrency"] if c >= 8]
        ),
        "cpu_access_log_cost_64": None
        if cpu("nolog", 64) is None or not cpu("default", 64)
        else 1 - cpu("nolog", 64) / cpu("default", 64),
        "access_log_line_vs_request_64": _ratio(
            (results.get("access_log_line") or {}).get("all_threads_us"), cpu("default", 64)
        ),
        "cpu_texts_vs_in_process": _ratio(
            texts_cpu and TEXTS_PER_REQUEST / texts_cpu * 1e6, in_proc and in_proc.get("headlines_per_cpu_s")
        ),
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

    at_least("64 clients: /predict / own /health/live throughput", "predict_vs_live_64")
    at_least("64 clients: /predict / reference 2 ms batcher throughput", "predict_vs_reference_64")
    at_most("64 clients: p99 ms", "p99_64_ms")
    at_most("1 client: p50 ms", "p50_1_ms")
    at_most("1 client: p99 ms", "p99_1_ms")
    at_most("64 clients: access-log cost (1 - on/off throughput)", "access_log_cost")
    at_least("texts x256: HTTP / in-process headlines/s", "texts_vs_in_process")
    at_least("8..256 clients: worst batching on / off throughput", "batching_vs_off_min")
    for name, key, target in (
        ("CPU: /predict / own /health/live requests per CPU-s", "cpu_predict_vs_live_64", "predict_vs_live_64"),
        ("CPU: /predict / reference requests per CPU-s", "cpu_predict_vs_reference_64", "predict_vs_reference_64"),
        ("CPU: texts x256 HTTP / in-process per CPU-s", "cpu_texts_vs_in_process", "texts_vs_in_process"),
    ):
        value = ratios[key]
        check(name, value, f">= {TARGETS[target]:g}", None if value is None else value >= TARGETS[target])
    limit = TARGETS["access_log_cost"]
    for name, key in (
        ("CPU: access-log cost, 8..256 clients", "cpu_access_log_cost_mean"),
        ("access-log line / request CPU", "access_log_line_vs_request_64"),
    ):
        value = ratios[key]
        check(name, value, f"<= {limit:g}", None if value is None else value <= limit)
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
    rounds = results["settings"]["rounds"]
    lines = [
        "| Ratio / figure (same run) | Value |",
        "|---|---|",
        f"| Throughput, /predict / own GET /health/live, 64 clients | **{_fmt(ratios['predict_vs_live_64'])}** |",
        f"| Throughput, /predict / reference batcher, 64 clients | **{_fmt(ratios['predict_vs_reference_64'])}x** |",
        f"| Throughput, batching on / off, 64 clients | {_fmt(ratios['batching_vs_off_64'])}x |",
        f"| Worst batching on / off over 8..256 clients | {_fmt(ratios['batching_vs_off_min'])}x |",
        f"| Access-log cost at 64 clients (1 - on / off) | {_fmt(ratios['access_log_cost'], '.1%')} |",
        f"| p99 latency, 64 clients | {_fmt(ratios['p99_64_ms'])} ms |",
        f"| p50 / p99 latency, 1 client | {_fmt(ratios['p50_1_ms'], '.3f')} / {_fmt(ratios['p99_1_ms'], '.3f')} ms |",
        f"| Headlines/s, `texts` x{TEXTS_PER_REQUEST} over HTTP | {_fmt(ratios['texts_headlines_per_s'], ',.0f')} |",
        f"| Headlines/s, in-process predict, 1 thread | {_fmt(in_proc and in_proc['headlines_per_s'], ',.0f')} |",
        f"| HTTP / in-process headlines/s | {_fmt(ratios['texts_vs_in_process'])} |",
        f"| The same with `--no-model-process` (model thread in the HTTP process) "
        f"| {_fmt(ratios['texts_thread_vs_in_process'])} |",
        f"| {results['settings']['replicas']} replicas / 1 server, 64 clients "
        f"| {_fmt(ratios['replicas_vs_single_64'])}x |",
        "",
        "The same ratios in server CPU time per request (requests per CPU-second; robust to other load):",
        "",
        "| CPU-time ratio (same run) | Value |",
        "|---|---|",
        f"| /predict / own GET /health/live, 64 clients | **{_fmt(ratios['cpu_predict_vs_live_64'])}** |",
        f"| /predict / reference batcher, 64 clients | **{_fmt(ratios['cpu_predict_vs_reference_64'])}x** |",
        f"| Access-log cost, 64 clients (1 - off / on CPU) | {_fmt(ratios['cpu_access_log_cost_64'], '.1%')} |",
        f"| Access-log cost, geometric mean over 8..256 clients | {_fmt(ratios['cpu_access_log_cost_mean'], '.1%')} |",
        f"| texts x{TEXTS_PER_REQUEST}: HTTP / in-process headlines per CPU-second "
        f"| {_fmt(ratios['cpu_texts_vs_in_process'])} |",
        f"| Access log, one line's CPU (measured alone) / CPU of one request at 64 clients "
        f"| {_fmt(ratios['access_log_line_vs_request_64'], '.1%')} |",
        "",
        f"Each row: the median of {rounds} interleaved slices (req/s of every slice in brackets). "
        "CPU: server CPU time (all threads / event-loop thread) per answered request.",
        "",
        "| Group | Config | Clients | req/s (median) | slices | p50 ms | p99 ms | CPU us/req | loop us/req "
        "| Statuses |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for p in results["points"]:
        lat = p["latency_ms"]
        cfg = ", ".join(f"{k}={v}" for k, v in p["config"].items()) or "defaults"
        statuses = " ".join(f"{k}:{v}" for k, v in p["statuses"].items())
        if _errors(p):
            statuses += f" conn-errors:{_errors(p)}"
        cpu = p.get("cpu_us_per_request")
        loop = p.get("loop_us_per_request")
        lines.append(
            f"| {p['group']} | {cfg} | {p['concurrency']} | {p['rps']:,.0f} | {p.get('rps_slices', '')} "
            f"| {lat['p50']:.2f} | {lat['p99']:.2f} | {_fmt(cpu, '.0f')} | {_fmt(loop, '.0f')} | {statuses} |"
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
    """Throughput (solid, left axis) and p99 (dashed, right axis, log) against clients, one line per server."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib not installed; no plot")
        return None
    fig, ax = plt.subplots(figsize=(9, 5.5))
    ax2 = ax.twinx()
    styles = {"default": "b", "nolog": "c", "off": "r", "reference": "m", "live": "k"}
    for group, color in styles.items():
        pts = [p for p in results["points"] if p["group"] == group]
        if not pts:
            continue
        clients = [p["concurrency"] for p in pts]
        label = {"live": "GET /health/live (floor)", "reference": "reference 2 ms batcher"}.get(group, group)
        ax.plot(clients, [p["rps"] for p in pts], f"{color}-o", label=f"{label}: req/s")
        if group != "live":
            ax2.plot(clients, [p["latency_ms"]["p99"] for p in pts], f"{color}--x", alpha=0.7, label=f"{label}: p99")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients (closed loop)")
    ax.set_ylabel("throughput (requests/s, solid)")
    ax2.set_ylabel("p99 latency (ms, dashed, log)")
    ax2.set_yscale("log")
    ax.set_title("POST /predict, one headline per request: throughput and p99 by clients")
    ax.grid(True, alpha=0.3)
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], fontsize=7, loc="upper left", ncol=2)
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
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per slice (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved slices per point (median)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up load seconds per server")
    parser.add_argument(
        "--engine",
        choices=("auto", "wrk", "async"),
        default="auto",
        help="load generator: wrk when installed, else the asyncio client",
    )
    parser.add_argument("--workers", type=int, default=1, help="wrk threads / async client processes")
    parser.add_argument("--concurrency", type=_ints, default=list(CONCURRENCY), help="clients, comma-separated")
    parser.add_argument("--sweep-batch", type=_ints, default=list(SWEEP_BATCH), help="max_batch_size values")
    parser.add_argument("--sweep-wait", type=_floats, default=list(SWEEP_WAIT_MS), help="max_wait_ms values")
    parser.add_argument("--sweep-clients", type=int, default=64)
    parser.add_argument("--texts-clients", type=_ints, default=[1, 2, 4], help="clients for the 256-headline point")
    parser.add_argument("--replicas", type=int, default=2, help="replicas for the scale-out point (0: skip)")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--skip-overload", action="store_true")
    parser.add_argument("--skip-floor", action="store_true", help="skip the floor comparison (bench/floor_compare.py)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 s slices, 1 round, clients 1,64")
    parser.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="servers write their per-request JSON log (the default; to a temp file)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 1.0)
        args.rounds = 1
        args.warmup = 0.5
        args.concurrency = [1, 64]
        args.sweep_batch, args.sweep_wait = [16], [2.0]
        args.texts_clients = [2]
    if args.skip_sweep:
        args.sweep_batch = []
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from bench.loadgen import wrk_available

    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every server this run started is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    titles = read_titles(args.data)
    engine = args.engine if args.engine != "auto" else ("wrk" if wrk_available() else "async")
    args.engine = engine
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "note": "servers, load generator and benchmark share the machine's CPUs; nothing is pinned",
        "settings": {
            "duration_s": args.duration,
            "rounds": args.rounds,
            "warmup_s": args.warmup,
            "engine": engine,
            "workers": args.workers,
            "access_log": args.access_log,
            "concurrency": args.concurrency,
            "replicas": args.replicas,
            "data": str(args.data),
        },
    }
    with tempfile.TemporaryDirectory(prefix="hc-serve-bench-") as tmp:
        scratch = Path(tmp)
        artifacts_dir, described = find_artifacts(args.artifacts_dir, titles, scratch)
        results["model"] = described
        print(f"model {described}; load generator {engine}; {args.rounds} x {args.duration:g} s per point", flush=True)
        if not args.skip_floor:  # first: the service beside the HTTP stack's own floor, as a user meets both
            from bench.floor_compare import compare, report

            results["floor"] = compare(artifacts_dir, rounds=args.rounds, seconds=max(args.duration, 1.0))
            print(report(results["floor"]), flush=True)
        bench = Bench(args, artifacts_dir, scratch, titles)
        bench.run_curves()
        results["in_process"] = bench.run_texts()
        if args.replicas > 1:
            bench.run_replicas()
        bench.run_sweep()
        if not args.skip_overload:
            bench.run_overload()
        results["access_log_line"] = access_log_us_per_line()
        print(f"  access log: {results['access_log_line']} us CPU per line", flush=True)
        results["points"] = bench.points
    results["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["analysis"] = analyse(results)
    results["markdown"] = markdown(results)
    plotted = plot(results, args.plot)
    results["plot"] = (
        str(plotted.relative_to(ROOT)) if plotted and plotted.is_relative_to(ROOT) else plotted and str(plotted)
    )
    print()
    print(f"machine: {results['machine']}  ({results['note']})")
    print(results["markdown"])
    if "floor" in results:
        print("\nThe service beside the HTTP stack's floor (wrk and http.client, medians):")
        print(report(results["floor"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"wrote {args.out}" + (f" and {plotted}" if plotted else ""))
    return results


if __name__ == "__main__":
    main()
