"""CUDA vs CPU, side by side in one run: the pieces ``scripts/device_check.sh`` calls on a GPU machine.

Three subcommands, each printing a table and appending one ``key=value`` line to ``--summary``:

- ``train-report DEVICE=DIR ...``: seconds per epoch and test weighted F1 of the newest artifact
  each training run wrote (read from its ``metrics.json``);
- ``inproc --artifacts-dir DIR``: the service's ``Predictor`` on each device for batches of 1, 64
  and 256 real headlines (headlines/s, interleaved slices, median), and how far the CUDA
  probabilities are from the CPU ones on the same titles;
- ``serve --artifacts-dir DIR``: a ``python -m service --device D`` server per device, a smoke check
  of each (``/predict`` one headline and 256, ``GET /model``'s device, the two servers' answers
  compared), then closed-loop load from ``bench.loadgen`` visiting the servers in turn.

Without CUDA every CUDA arm is skipped with a ``skip:`` line and the CPU arms still run, so a
CPU-only dry run exercises everything else.

    python -m bench.device_check inproc --artifacts-dir artifacts --summary /tmp/summary.txt
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.loadgen import text_groups
from bench.serve_bench import TEXTS_PER_REQUEST

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("NEWS_DATA", ROOT.parent / "shared" / "data" / "news_10k.csv"))
BATCH_SIZES = (1, 64, 256)
# (label, body kind, clients): the load points, each run against every server in turn.
LOAD_POINTS = (("single c=1", "single", 1), ("single c=64", "single", 64), ("texts256 c=2", "texts", 2))
AGREE_TOLERANCE = 1e-4


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def devices() -> list[str]:
    """The devices to compare: CUDA first when present, CPU always."""
    if cuda_available():
        return ["cuda", "cpu"]
    print("skip: CUDA is not available here; only the CPU arms run", flush=True)
    return ["cpu"]


def append_summary(path: Path | None, line: str) -> None:
    print(f"summary: {line}", flush=True)
    if path is not None:
        with path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def max_abs_diff(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> float:
    """Largest element-wise difference of two equally shaped probability tables."""
    if len(a) != len(b) or any(len(x) != len(y) for x, y in zip(a, b, strict=True)):
        raise ValueError("tables differ in shape")
    return max((abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)), default=0.0)


def response_table(body: dict[str, Any], classes: Sequence[str]) -> list[list[float]]:
    """A /predict answer's probabilities as rows in request order and columns in ``classes`` order."""
    return [[float(p["probabilities"][c]) for c in classes] for p in body["predictions"]]


# --------------------------------------------------------------------------- training


def train_report(runs: dict[str, Path], summary: Path | None) -> dict[str, dict[str, Any]]:
    """Per device: seconds per epoch, epochs, test weighted F1 of the newest artifact in its folder."""
    from contract.artifact import ArtifactError, resolve_version

    rows: dict[str, dict[str, Any]] = {}
    for device, folder in runs.items():
        try:
            version = resolve_version(folder)
        except ArtifactError as exc:
            print(f"skip: {device}: no artifact in {folder} ({exc})", flush=True)
            continue
        metrics = json.loads((version / "metrics.json").read_text(encoding="utf-8"))
        timing = metrics["timing"]
        rows[device] = {
            "s_per_epoch": timing["seconds_per_epoch"],
            "s_per_epoch_min": timing["seconds_per_epoch_min"],
            "epochs": timing["epochs_run"],
            "train_s": timing["train_s"],
            "total_s": timing.get("total_s"),
            "threads": timing.get("threads"),
            "ran_on": timing.get("device"),
            "test_f1": metrics["test"]["overall"]["f1"],
        }
    print(f"{'device':<6} {'ran on':<8} {'s/epoch':>8} {'min':>7} {'epochs':>6} {'train s':>8} {'total s':>8} "
          f"{'threads':>7} {'test F1':>8}")  # fmt: skip
    for device, r in rows.items():
        print(
            f"{device:<6} {r['ran_on']:<8} {r['s_per_epoch']:>8.3f} {r['s_per_epoch_min']:>7.3f} {r['epochs']:>6} "
            f"{r['train_s']:>8.2f} {fmt(r['total_s'], '.2f'):>8} {fmt(r['threads'], 'd'):>7} {r['test_f1']:>8.4f}"
        )
    parts = [f"{d}_s_per_epoch={r['s_per_epoch']:.3f} {d}_test_f1={r['test_f1']:.4f}" for d, r in rows.items()]
    speedup = ratio(rows.get("cpu", {}).get("s_per_epoch"), rows.get("cuda", {}).get("s_per_epoch"))
    append_summary(summary, "train: " + " ".join(parts) + (f" cuda_speedup={speedup:.2f}x" if speedup else ""))
    return rows


# --------------------------------------------------------------------------- in-process


def read_titles(path: Path) -> list[str]:
    from bench.serve_bench import read_titles as read

    return read(path)


def predictor_rate(predictor: Any, batches: Sequence[list[str]], seconds: float) -> float:
    """Headlines/s of ``predictor.predict`` cycling through ``batches`` for ``seconds`` (results land in
    numpy, so a CUDA forward is finished before the clock is read)."""
    done = headlines = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        batch = batches[done % len(batches)]
        predictor.predict(batch, observe=False)
        done += 1
        headlines += len(batch)
    return headlines / (time.perf_counter() - started)


def inproc(artifacts_dir: Path, titles: list[str], seconds: float, rounds: int, summary: Path | None) -> dict[str, Any]:
    """Predictor headlines/s per device and batch size, and CUDA-vs-CPU agreement on the same titles."""
    import numpy as np
    import torch

    from service.inference.predictor import Predictor
    from service.inference.threads import available_cpus

    threads = max(1, available_cpus() - 1)  # what the server's auto setting uses
    torch.set_num_threads(threads)
    predictors = {d: Predictor.load(artifacts_dir, device=d) for d in devices()}
    rng = random.Random(0)
    batches = {n: [rng.sample(titles, n) for _ in range(16)] for n in BATCH_SIZES}
    for predictor in predictors.values():
        for n in BATCH_SIZES:
            predictor.predict(batches[n][0], observe=False)
    slices: dict[tuple[str, int], list[float]] = {(d, n): [] for d in predictors for n in BATCH_SIZES}
    for _ in range(rounds):
        for n in BATCH_SIZES:
            for d, predictor in predictors.items():
                slices[(d, n)].append(predictor_rate(predictor, batches[n], seconds))
    rates = {key: statistics.median(values) for key, values in slices.items()}
    print(f"in-process Predictor, headlines/s (median of {rounds} x {seconds:g} s; CPU threads {threads})")
    print(f"{'batch':>6} {'cuda':>10} {'cpu':>10} {'cuda/cpu':>9}")
    for n in BATCH_SIZES:
        cuda, cpu = rates.get(("cuda", n)), rates.get(("cpu", n))
        print(f"{n:>6} {fmt(cuda, ',.0f'):>10} {fmt(cpu, ',.0f'):>10} {fmt(ratio(cuda, cpu), '.2f'):>9}")
    result: dict[str, Any] = {"threads": threads, "rates": {f"{d}_{n}": r for (d, n), r in rates.items()}}
    line = " ".join(f"{d}_b{n}={r:.0f}/s" for (d, n), r in rates.items())
    if "cuda" in predictors:
        sample = rng.sample(titles, min(2048, len(titles)))
        on_cpu = predictors["cpu"].predict(sample, observe=False).probabilities
        on_cuda = predictors["cuda"].predict(sample, observe=False).probabilities
        diff = float(np.abs(on_cpu - on_cuda).max())
        same = float((on_cpu.argmax(1) == on_cuda.argmax(1)).mean())
        verdict = "OK" if diff <= AGREE_TOLERANCE else f"OVER {AGREE_TOLERANCE:g}"
        print(f"CUDA vs CPU on {len(sample)} titles: max |p_cuda - p_cpu| = {diff:.2e} ({verdict}); "
              f"same label {same:.4f}")  # fmt: skip
        result.update(max_abs_diff=diff, same_label=same)
        line += f" max_abs_diff={diff:.2e} same_label={same:.4f}"
    else:
        print("skip: CUDA vs CPU agreement (no CUDA)", flush=True)
    append_summary(summary, "inproc: " + line)
    return result


# --------------------------------------------------------------------------- serving


def smoke(port: int, device: str, titles: list[str]) -> tuple[list[str], list[list[float]], str]:
    """One headline and 256 through /predict, and GET /model; raises AssertionError on a wrong answer.
    Returns the classes, the 256-headline probabilities and the device /model reports."""
    import httpx

    url = f"http://127.0.0.1:{port}"
    info = httpx.get(f"{url}/model", timeout=10).json()
    classes = list(info["categories"])
    served_on = str(info["device"])
    assert served_on.startswith(device), f"/model says device {served_on!r}, expected {device}"
    one = httpx.post(f"{url}/predict", json={"text": "Stocks rally as oil prices fall"}, timeout=10)
    assert one.status_code == 200, one.text
    pred = one.json()["predictions"]
    assert len(pred) == 1 and pred[0]["label"] in classes
    assert abs(sum(pred[0]["probabilities"].values()) - 1) < 1e-4, pred
    texts = titles[:TEXTS_PER_REQUEST]
    many = httpx.post(f"{url}/predict", json={"texts": texts}, timeout=30)
    assert many.status_code == 200, many.text
    table = response_table(many.json(), classes)
    assert len(table) == len(texts)
    assert all(abs(sum(row) - 1) < 1e-4 for row in table)
    print(f"  {device}: /model device {served_on}; /predict 1 -> {pred[0]['label']}; /predict 256 -> 256 answers")
    return classes, table, served_on


def serve(artifacts_dir: Path, titles: list[str], seconds: float, workers: int, summary: Path | None) -> dict[str, Any]:
    """A server per device, smoke-checked, then each load point against each server in turn."""
    from bench.loadgen import run_load, single_headline_bodies, write_bodies
    from bench.serve_bench import launch

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="hc-device-check-") as tmp, contextlib.ExitStack() as stack:
        scratch = Path(tmp)
        bodies = {
            "single": single_headline_bodies(titles, scratch / "single.jsonl"),
            "texts": write_bodies(
                ({"texts": g} for g in text_groups(titles, TEXTS_PER_REQUEST)), scratch / "texts.jsonl"
            ),
        }
        servers = {}
        for device in devices():
            started = time.perf_counter()
            servers[device] = stack.enter_context(launch(artifacts_dir, ["--device", device], scratch, device))
            print(f"  {device} server ready on port {servers[device].port} in {time.perf_counter() - started:.1f} s")
        answers = {d: smoke(s.port, d, titles) for d, s in servers.items()}
        if "cuda" in answers:
            diff = max_abs_diff(answers["cuda"][1], answers["cpu"][1])
            print(f"  /predict 256 headlines, CUDA vs CPU server: max |p diff| = {diff:.2e}")
            results["http_max_abs_diff"] = diff
        for server in servers.values():  # warm-up: allocator, kernels, connection pools
            run_load(server.port, "/predict", bodies["single"], 16, 0.5, engine="async", workers=1)
        points: dict[tuple[str, str], dict[str, Any]] = {}
        for label, kind, clients in LOAD_POINTS:
            for device, server in servers.items():
                w = max(1, min(workers, clients))
                points[(label, device)] = run_load(
                    server.port, "/predict", bodies[kind], clients, seconds, engine="async", workers=w
                )
    print(f"HTTP load (bench.loadgen async engine, {seconds:g} s per point; req/s, latency ms)")
    print(f"{'point':<14} {'cuda req/s':>10} {'p50':>7} {'p99':>7}   {'cpu req/s':>10} {'p50':>7} {'p99':>7}  "
          f"{'cuda/cpu':>8}  statuses")  # fmt: skip
    line = []
    for label, _, _ in LOAD_POINTS:
        rps = {d: float(points[(label, d)]["rps"]) if (label, d) in points else None for d in ("cuda", "cpu")}
        cells = []
        for d in ("cuda", "cpu"):
            lat = points[(label, d)]["latency_ms"] if (label, d) in points else {}
            cells.append(f"{fmt(rps[d], ',.0f'):>10} {fmt(lat.get('p50'), '.2f'):>7} {fmt(lat.get('p99'), '.2f'):>7}")
        statuses = {d: points[(label, d)]["statuses"] for d in servers}
        speedup = fmt(ratio(rps["cuda"], rps["cpu"]), ".2f")
        print(f"{label:<14} {cells[0]}   {cells[1]}  {speedup:>8}  {statuses}")
        for d in servers:
            p = points[(label, d)]
            line.append(f"{label.replace(' ', '_')}_{d}={p['rps']:.0f}rps/p99={p['latency_ms']['p99']:.1f}ms")
    results["points"] = {f"{label}|{d}": p for (label, d), p in points.items()}
    if "http_max_abs_diff" in results:
        line.append(f"http_max_abs_diff={results['http_max_abs_diff']:.2e}")
    append_summary(summary, "serve: " + " ".join(line))
    return results


# --------------------------------------------------------------------------- CLI


def parse_run(text: str) -> tuple[str, Path]:
    device, sep, folder = text.partition("=")
    if not sep or not device or not folder:
        raise argparse.ArgumentTypeError(f"expected DEVICE=DIR, got {text!r}")
    return device, Path(folder)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.device_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--summary", type=Path, default=None, help="append the key numbers as one line to this file")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train-report", help="seconds per epoch and test F1 of training runs")
    t.add_argument("runs", nargs="+", type=parse_run, metavar="DEVICE=DIR")
    for name, helptext in (("inproc", "Predictor headlines/s and agreement"), ("serve", "HTTP servers under load")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--artifacts-dir", type=Path, required=True)
        s.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CSV with a title column [env NEWS_DATA]")
        s.add_argument("--seconds", type=float, default=1.5, help="seconds per slice / load point")
        if name == "inproc":
            s.add_argument("--rounds", type=int, default=2, help="interleaved slices per cell (median)")
        else:
            s.add_argument("--workers", type=int, default=4, help="load generator processes (at most the clients)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train-report":
        rows = train_report(dict(args.runs), args.summary)
        return 0 if rows else 1
    titles = read_titles(args.data)
    if args.command == "inproc":
        inproc(args.artifacts_dir, titles, args.seconds, args.rounds, args.summary)
    else:
        serve(args.artifacts_dir, titles, args.seconds, args.workers, args.summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
