"""Model choice on the unseen-word proxy: GRU variants beside the two linear models, per seed.

Each variant trains the way the shipped model is trained (early stopping, refit on train +
validation, temperature on the split's own shifted validation rows) on ``--split unseen``:
a time block plus every title that shares a rare word with it, so about one test token in
seven is unseen. The word TF-IDF baseline and the word + character n-gram linear SVM are fitted
on the same rows in the same run. Prints one line per (variant, seed) and the means, and
writes the rows as JSON.

    python -m bench.proxy_bench --variants words linear_bg64k linear_bg64k_b256_lr3 --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from training.config import TrainConfig
from training.pipeline import run

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("NEWS_DATA", ROOT.parent / "shared" / "data" / "news_10k.csv"))

# Every variant names the settings it compares in full, so its meaning does not move when
# TrainConfig's defaults do.
_WORDS = {
    "keep_parenthesised": False, "subword_buckets": 0, "word_dropout": 0.2, "linear_head": False,
    "batch_size": 128, "lr": 2e-3, "label_smoothing": 0.1, "linear_gram_factor": 1,
}  # fmt: skip
_HEAD = {**_WORDS, "subword_buckets": 20000, "subword_embeddings": False, "subword_head": True}
_WD35 = {**_WORDS, "subword_buckets": 20000, "keep_parenthesised": True, "word_dropout": 0.35}
_BG64K = {**_WD35, "linear_head": True, "linear_bigram_buckets": 65536}
VARIANTS: dict[str, dict[str, Any]] = {
    "words": _WORDS,
    "words_parens": {**_WORDS, "keep_parenthesised": True},
    "subword20k": {**_WORDS, "subword_buckets": 20000},
    "subword20k_parens": {**_WORDS, "subword_buckets": 20000, "keep_parenthesised": True},
    "subword20k_wd35": {**_WORDS, "subword_buckets": 20000, "word_dropout": 0.35},
    "subword20k_parens_wd35": _WD35,
    "subword20k_parens_wd50": {**_WD35, "word_dropout": 0.5},
    "subword20k_parens_wd65": {**_WD35, "word_dropout": 0.65},
    "subword20k_parens_wd35_n2": {**_WD35, "subword_min_n": 2},
    "subword20k_parens_wd35_edrop50": {**_WD35, "embedding_dropout": 0.5},
    "subword20k_parens_wd35_rare60": {**_WD35, "rare_word_dropout": 0.6},
    "head20k": _HEAD,
    "head20k_lr10": {**_HEAD, "head_lr_scale": 10.0},
    "head20k_lr30": {**_HEAD, "head_lr_scale": 30.0},
    "head50k_n2_lr30": {**_HEAD, "subword_buckets": 50000, "subword_min_n": 2, "head_lr_scale": 30.0},
    "linear_bg64k": _BG64K,
    "linear_bg64k_sparse": {**_BG64K, "sparse_embeddings": True},
    "linear_bg64k_b256": {**_BG64K, "batch_size": 256},
    "linear_bg64k_b256_n2": {**_BG64K, "batch_size": 256, "subword_min_n": 2},
    "linear_bg64k_b256_lr3": {**_BG64K, "batch_size": 256, "lr": 3e-3},
    "linear_bg64k_b256_lr3_n2": {**_BG64K, "batch_size": 256, "lr": 3e-3, "subword_min_n": 2},
    "linear_bg64k_b256_lr3_g80k": {**_BG64K, "batch_size": 256, "lr": 3e-3, "linear_gram_factor": 4},
    "linear_bg64k_b256_lr3_ls0_g80k": {
        **_BG64K,
        "batch_size": 256,
        "lr": 3e-3,
        "label_smoothing": 0.0,
        "linear_gram_factor": 4,
    },
}


def measure(config: TrainConfig) -> dict[str, Any]:
    """One training run's proxy numbers."""
    with tempfile.TemporaryDirectory() as tmp:
        result = run(replace(config, artifacts_dir=tmp))
    metrics = result.metrics
    summary = metrics["splits"][config.split]
    return {
        "oov": summary["test_oov_token_rate"],
        "gru_f1": summary["test_f1"],
        "ece": summary["calibration"]["ece_after"],
        "temperature": summary["calibration"]["temperature"],
        "word_tfidf_f1": summary["baseline_test_f1"],
        "char_linear_f1": summary["anchor_test_f1"],
        "s_per_epoch": metrics["timing"]["seconds_per_epoch"],
        "linear_f1": metrics["linear_head"]["test_f1"] if "linear_head" in metrics else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--variants", nargs="+", default=["words", "linear_bg64k", "linear_bg64k_b256_lr3"], choices=sorted(VARIANTS)
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--split", default="unseen", choices=("unseen", "random", "time"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "proxy_bench.json")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        parser.error(f"data not found: {args.data} (set NEWS_DATA or pass --data)")
    rows: list[dict[str, Any]] = []
    if args.output.exists():
        rows = [r for r in json.loads(args.output.read_text()) if r["split"] != args.split or
                (r["variant"], r["seed"]) not in {(v, s) for v in args.variants for s in args.seeds}]  # fmt: skip
    header = (
        f"{'variant':<24} {'seed':>4} {'OOV':>6} {'GRU F1':>7} {'ECE':>6} {'word LR':>7} {'char SVM':>8} {'s/ep':>5}"
    )
    print(f"split {args.split}\n{header}", flush=True)
    for name in args.variants:
        for seed in args.seeds:
            config = replace(
                TrainConfig(), **VARIANTS[name], data=str(args.data), split=args.split, seed=seed,
                threads=args.threads, quiet=True, plots=False, temperature_rows="own",
            )  # fmt: skip
            row = {"variant": name, "split": args.split, "seed": seed, **measure(config)}
            rows.append(row)
            print(
                f"{name:<24} {seed:>4} {row['oov']:>6.3f} {row['gru_f1']:>7.4f} {row['ece']:>6.3f} "
                f"{row['word_tfidf_f1']:>7.4f} {row['char_linear_f1']:>8.4f} {row['s_per_epoch']:>5.2f}",
                flush=True,
            )
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(rows, indent=1))
    print("\nmeans over seeds")
    for name in args.variants:
        mine = [r for r in rows if r["variant"] == name and r["split"] == args.split and r["seed"] in args.seeds]
        if mine:
            mean = {
                k: float(np.mean([r[k] for r in mine]))
                for k in ("oov", "gru_f1", "ece", "word_tfidf_f1", "char_linear_f1")
            }
            print(
                f"{name:<24} n={len(mine)} OOV {mean['oov']:.3f} GRU {mean['gru_f1']:.4f} ECE {mean['ece']:.3f} "
                f"word LR {mean['word_tfidf_f1']:.4f} char SVM {mean['char_linear_f1']:.4f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
