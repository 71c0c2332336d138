"""In-process serving speed of two model artifacts side by side: the same 256 headlines per call.

Both go through ``service.inference.predictor.Predictor`` (the service's own encoding, padding and
forward pass), one thread, interleaved rounds so machine noise hits both alike. Prints
headlines per second, the ratio new/old, and the weight file sizes.

    python -m bench.model_speed --old /tmp/old-artifacts --new artifacts
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", type=Path, required=True, help="artifacts folder of the model to compare against")
    parser.add_argument("--new", type=Path, default=ROOT / "artifacts", help="artifacts folder of the new model")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--texts", type=int, default=256, help="headlines per call")
    parser.add_argument("--calls", type=int, default=20, help="calls per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    texts = headlines(args.data, args.texts)
    models = {name: Predictor.load(folder, device="cpu") for name, folder in (("old", args.old), ("new", args.new))}
    for predictor in models.values():
        per_second(predictor, texts, 2)  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, predictor in models.items():
            rates[name].append(per_second(predictor, texts, args.calls))
    print(f"{args.texts} headlines per call, {args.calls} calls x {args.rounds} rounds, 1 thread, in process")
    print(f"{'model':<5} {'version':<28} {'weights MB':>10} {'median /s':>10} {'min /s':>8} {'max /s':>8}")
    for name, predictor in models.items():
        size = (resolve_version(getattr(args, name), "latest") / "model.pt").stat().st_size / 1e6
        r = rates[name]
        median = statistics.median(r)
        print(f"{name:<5} {predictor.version:<28} {size:>10.2f} {median:>10.0f} {min(r):>8.0f} {max(r):>8.0f}")
    print(f"new / old (median): {statistics.median(rates['new']) / statistics.median(rates['old']):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
