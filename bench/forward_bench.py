"""The model's forward pass on the CPU: the fused serving recurrence beside torch's ``nn.GRU``.

Real headlines from the sample, encoded and padded once; each batch size is timed with the
fused recurrence (what the service and offline scoring run, ``contract/recurrence.py``) and
with the same model's ``nn.GRU`` path (what training runs), interleaved over ``--rounds``,
one torch thread. Prints µs per text for both and the ratio, and checks they agree.

    python -m bench.forward_bench                      # artifacts/ (the committed default)
    python -m bench.forward_bench --batches 1,32,256 --rounds 5
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from pathlib import Path

import torch

from contract.model import pad_batch
from service.inference.predictor import Predictor

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("NEWS_DATA", ROOT.parent / "shared" / "data" / "news_10k.csv"))


def _time_per_text(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], texts: int) -> float:
    started = time.perf_counter()
    for ids, lengths in batches:
        model(ids, lengths)
    return (time.perf_counter() - started) / texts * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts-dir", default=str(ROOT / "artifacts"))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--batches", default="1,8,32,64,256", help="batch sizes, comma-separated")
    parser.add_argument("--texts", type=int, default=2048, help="headlines per timing (fewer for batch 1)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    torch.set_num_threads(1)
    predictor = Predictor.load(args.artifacts_dir, device="cpu")
    model = predictor.model
    fused = model.fused
    if fused is None:
        raise SystemExit(f"{predictor.version}: this model has no fused recurrence (not a GRU, or unfolded n-grams)")
    with args.data.open(newline="", encoding="utf-8") as fh:
        titles = [row["title"] for row in csv.DictReader(fh)]
    print(f"model {predictor.version}, {len(titles)} headlines from {args.data.name}, 1 torch thread")
    print(f"{'batch':>6} {'fused µs/text':>14} {'nn.GRU µs/text':>15} {'nn.GRU ÷ fused':>15} {'max |Δp|':>10}")
    with torch.inference_mode():
        for size in (int(b) for b in args.batches.split(",")):
            count = min(args.texts, 256) if size == 1 else args.texts
            encoded = [predictor.encoder.encode(t)[0] for t in titles[:count]]
            batches = [pad_batch(encoded[i : i + size]) for i in range(0, count - size + 1, size)]
            texts = len(batches) * size
            times: dict[str, list[float]] = {"fused": [], "nn": []}
            for _ in range(args.rounds):
                for name in ("fused", "nn"):
                    model.fused = fused if name == "fused" else None
                    _time_per_text(model, batches[:2], 2 * size)  # warm
                    times[name].append(_time_per_text(model, batches, texts))
            model.fused = fused
            fast = torch.softmax(model(*batches[0]), -1)
            model.fused = None
            slow = torch.softmax(model(*batches[0]), -1)
            model.fused = fused
            a, b = statistics.median(times["fused"]), statistics.median(times["nn"])
            print(f"{size:>6} {a:>14.1f} {b:>15.1f} {b / a:>14.2f}x {float((fast - slow).abs().max()):>10.1e}")


if __name__ == "__main__":
    main()
