"""Serving speed of two model artifacts side by side: the same 256 headlines per call.

In process, both go through ``service.inference.predictor.Predictor`` (the service's own
encoding, padding and forward pass) on one thread; with ``--http``, also one real server per
model (``python -m service``, its default settings) answering ``{"texts": [...]}`` from one
client. Rounds are interleaved so machine noise hits both alike. Prints headlines per second,
the ratio new/old, and the weight file sizes.

    python -m bench.model_speed --old /tmp/old-artifacts --new artifacts --http
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from contract.artifact import resolve_version
from service.inference.predictor import Predictor

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("NEWS_DATA", ROOT.parent / "shared" / "data" / "news_10k.csv"))


def headlines(path: Path, count: int) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [row["title"] for _, row in zip(range(count), csv.DictReader(handle), strict=False)]


def per_second(predictor: Predictor, texts: list[str], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        predictor.predict(texts, observe=False)
    return calls * len(texts) / (time.perf_counter() - started)


def http_caller(port: int, texts: list[str]) -> Callable[[int], float]:
    """Headlines/s of ``calls`` sequential ``{"texts": [...]}`` requests to a server on ``port``."""
    import httpx

    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    body = {"texts": texts}

    def rate(calls: int) -> float:
        started = time.perf_counter()
        for _ in range(calls):
            client.post("/predict", json=body).raise_for_status()
        return calls * len(texts) / (time.perf_counter() - started)

    return rate


def interleaved(callers: dict[str, Callable[[int], float]], calls: int, rounds: int) -> dict[str, list[float]]:
    """Rates per caller over ``rounds`` rounds, the callers taking turns within each round."""
    for call in callers.values():
        call(2)  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in callers}
    for _ in range(rounds):
        for name, call in callers.items():
            rates[name].append(call(calls))
    return rates


def report(title: str, rates: dict[str, list[float]], versions: dict[str, str], sizes: dict[str, float]) -> None:
    print(title)
    print(f"{'model':<5} {'version':<28} {'weights MB':>10} {'median /s':>10} {'min /s':>8} {'max /s':>8}")
    for name, r in rates.items():
        median = statistics.median(r)
        print(f"{name:<5} {versions[name]:<28} {sizes[name]:>10.2f} {median:>10.0f} {min(r):>8.0f} {max(r):>8.0f}")
    print(f"new / old (median): {statistics.median(rates['new']) / statistics.median(rates['old']):.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", type=Path, required=True, help="artifacts folder of the model to compare against")
    parser.add_argument("--new", type=Path, default=ROOT / "artifacts", help="artifacts folder of the new model")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--texts", type=int, default=256, help="headlines per call")
    parser.add_argument("--calls", type=int, default=20, help="calls per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--http", action="store_true", help="also compare one server per model over HTTP")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    texts = headlines(args.data, args.texts)
    folders = {"old": args.old, "new": args.new}
    models = {name: Predictor.load(folder, device="cpu") for name, folder in folders.items()}
    versions = {name: predictor.version for name, predictor in models.items()}
    sizes = {
        name: (resolve_version(folder, "latest") / "model.pt").stat().st_size / 1e6 for name, folder in folders.items()
    }
    in_process = {name: (lambda calls, p=p: per_second(p, texts, calls)) for name, p in models.items()}
    rates = interleaved(in_process, args.calls, args.rounds)
    report(f"{args.texts} headlines per call, {args.calls} calls x {args.rounds} rounds, 1 thread, in process",
           rates, versions, sizes)  # fmt: skip
    if args.http:
        from bench.serve_bench import launch

        with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
            servers = {
                name: stack.enter_context(launch(folder, [], Path(scratch), name)) for name, folder in folders.items()
            }
            over_http = {name: http_caller(server.port, texts) for name, server in servers.items()}
            rates = interleaved(over_http, args.calls, args.rounds)
        report("\nthe same over HTTP: one server per model (default settings), one client", rates, versions, sizes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
