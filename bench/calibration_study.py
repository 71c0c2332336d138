"""Calibration study: how each temperature-fitting method does on pooled held-out predictions.

One 1,500-title test split cannot resolve an ECE of 0.02: a perfectly calibrated model with
these confidences already measures 0.021-0.027 on it (``ece_noise_floor``). So this script
trains the default config on both splits (``random`` and ``time``) for several seeds, keeps
every logit it needs, and compares the methods on the same pooled test predictions (9,000
titles for 3 seeds x 2 splits: noise floor about 0.01). Per run it keeps

* the first model's (train only, early-stopped on val) val and test logits,
* the refit model's (train + val, the epochs the first run chose: what is shipped) test logits,
* the cross-fitted val logits (``training.fitting.crossfit_val_logits``: two models trained
  like the refit on train + one half of val, each scoring the other half).

Methods, each a temperature per run applied to that run's test logits:

* ``none``: the refit model at T = 1;
* ``first``: T fitted on the first model's val logits, applied to the refit model (the default);
* ``first_at_least_1``: as ``first``, but never below 1 (never sharpen the model's probabilities);
* ``crossfit``: T fitted on the cross-fitted val logits, applied to the refit model (``--temperature-fit crossfit``);
* ``crossfit_ece``: as ``crossfit``, but the T minimising val ECE rather than NLL;
* ``no_refit``: the first model itself with its own val temperature (ships less data);
* ``oracle``: T fitted on the refit model's own test logits: the best any scalar can do.

No TF-IDF baseline is trained (it takes minutes and does not touch calibration). Runs are
cached as .npz files, so an interrupted study resumes and ``--report-only`` re-analyses.

    python -m bench.calibration_study --threads 1                         # 3 seeds x 2 splits x LS 0.1 and 0
    python -m bench.calibration_study --label-smoothing 0.1 --seeds 1 --splits time
    python -m bench.calibration_study --report-only
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import f1_score

from contract.text import LabelEncoder, Normalizer, PreprocessSettings
from training import distributed
from training.calibration import ECE_BINS, ece_noise_floor, expected_calibration_error, fit_temperature, nll
from training.config import TrainConfig
from training.data import read_dataset, split_rows
from training.engine import predict_logits
from training.fitting import Corpus, crossfit_val_logits, fit_model

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("NEWS_DATA", ROOT.parent / "shared" / "data" / "news_10k.csv"))
METHODS = ("none", "first", "first_at_least_1", "crossfit", "crossfit_ece", "no_refit", "oracle")


def load_corpus(data: Path) -> tuple[Corpus, list[str]]:
    """The whole CSV, preprocessed with the default settings (stopwords kept)."""
    dataset = read_dataset(data)
    preprocessing = PreprocessSettings()
    normalizer = Normalizer(preprocessing)
    labels = LabelEncoder.fit(dataset.labels)
    corpus = Corpus(
        titles=dataset.titles,
        tokens=[normalizer.tokens(t) for t in dataset.titles],
        targets=np.asarray(labels.encode(dataset.labels), dtype=np.int64),
        labels=labels,
        preprocessing=preprocessing,
    )
    return corpus, dataset.labels


def study_split(
    kind: str, labels: list[str], tokens: list[list[str]], config: TrainConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pipeline's splits, plus ``future``: what the default command meets after shipping.

    ``future`` draws train and validation at random (stratified, as ``--split random`` does)
    from the earliest 85% of the file and tests on the latest 15%: a model trained and
    calibrated the default way, then scored on later news, like the team's held-out set.
    """
    if kind != "future":
        return split_rows(kind, labels, tokens, config.seed, config.fractions)
    n_test = int(round(len(labels) * config.test_fraction))
    past = len(labels) - n_test
    val_share = config.val_fraction / (1 - config.test_fraction)
    rng = np.random.default_rng(config.seed)
    past_labels = np.asarray(labels[:past])
    val = [
        rng.permutation(rows)[: int(round(len(rows) * val_share))]
        for rows in (np.flatnonzero(past_labels == label) for label in sorted(set(labels)))
    ]
    val_idx = np.sort(np.concatenate(val))
    return np.setdiff1d(np.arange(past), val_idx), val_idx, np.arange(past, len(labels))


def collect(config: TrainConfig, corpus: Corpus, raw_labels: list[str], kind: str) -> dict[str, np.ndarray]:
    """Train first model, refit and cross-fit models for one (split, seed); return their logits."""
    dist = distributed.setup(config.device)
    quiet = lambda *a, **k: None  # noqa: E731
    try:
        train_idx, val_idx, test_idx = study_split(kind, raw_labels, corpus.tokens, config)
        started = time.perf_counter()
        first = fit_model(config, dist, corpus, train_idx, val_idx, quiet)

        def logits(fitted: Any, rows: np.ndarray) -> np.ndarray:
            return predict_logits(
                fitted.model, fitted.ids[rows], fitted.lengths[rows], dist.device, token_table=fitted.table
            ).numpy()

        schedule = [h["lr"] for h in first.result.history[: first.result.best_epoch]]
        both = np.sort(np.concatenate([train_idx, val_idx]))
        refit = fit_model(config, dist, corpus, both, val_idx, quiet, schedule)
        first_and_refit_s = time.perf_counter() - started
        t0 = time.perf_counter()
        val_cross = crossfit_val_logits(config, dist, corpus, train_idx, val_idx, schedule, quiet).numpy()
        return {
            "val_y": corpus.targets[val_idx],
            "test_y": corpus.targets[test_idx],
            "val_first": logits(first, val_idx),
            "test_first": logits(first, test_idx),
            "test_refit": logits(refit, test_idx),
            "val_cross": val_cross,
            "epochs": np.asarray(len(schedule)),
            "seconds_first_and_refit": np.asarray(first_and_refit_s),
            "seconds_crossfit": np.asarray(time.perf_counter() - t0),
        }
    finally:
        dist.close()


def ece_minimising_temperature(logits: torch.Tensor, targets: np.ndarray) -> float:
    """Grid search of log T for the lowest ECE (ECE is not smooth, so no golden section)."""
    grid = np.exp(np.linspace(np.log(0.5), np.log(2.0), 141))
    eces = [expected_calibration_error(torch.softmax(logits.double() / t, 1).numpy(), targets) for t in grid]
    return float(grid[int(np.argmin(eces))])


def temperatures(run: dict[str, np.ndarray]) -> dict[str, float]:
    """Each method's temperature for one run."""
    val_cross = torch.from_numpy(run["val_cross"])
    first = fit_temperature(torch.from_numpy(run["val_first"]), run["val_y"])
    return {
        "none": 1.0,
        "first": first,
        "first_at_least_1": max(first, 1.0),
        "crossfit": fit_temperature(val_cross, run["val_y"]),
        "crossfit_ece": ece_minimising_temperature(val_cross, run["val_y"]),
        "no_refit": first,
        "oracle": fit_temperature(torch.from_numpy(run["test_refit"]), run["test_y"]),
    }


def scored(run: dict[str, np.ndarray], method: str, temperature: float) -> tuple[torch.Tensor, np.ndarray]:
    """The test logits a method's temperature is applied to."""
    key = "test_first" if method == "no_refit" else "test_refit"
    return torch.from_numpy(run[key]).double() / temperature, run["test_y"]


def _weighted_ece(confidence: np.ndarray, correct: np.ndarray, weight: np.ndarray) -> float:
    """ECE (15 equal-width bins, as ``expected_calibration_error``) with a weight per prediction."""
    index = np.clip(np.ceil(confidence * ECE_BINS).astype(int) - 1, 0, ECE_BINS - 1)
    conf_sum = np.bincount(index, weights=weight * confidence, minlength=ECE_BINS)
    acc_sum = np.bincount(index, weights=weight * correct, minlength=ECE_BINS)
    return float(np.abs(acc_sum - conf_sum).sum() / weight.sum())


def bootstrap(
    pooled: dict[str, tuple[np.ndarray, np.ndarray]], rows: np.ndarray, reps: int = 300, seed: int = 0
) -> dict[str, dict[str, list[float]]]:
    """90% intervals of each method's pooled ECE and of its difference to ``first``.

    Resamples titles (file rows), not predictions: the time split tests every seed on the
    same 1,500 titles, so its predictions are not independent draws, and a title's luck is
    shared by every model that scored it. The same resample is used for every method (paired).
    """
    rng = np.random.default_rng(seed)
    unique, inverse = np.unique(rows, return_inverse=True)
    samples = {method: [] for method in pooled}
    diffs = {method: [] for method in pooled}
    for _ in range(reps):
        weight = np.bincount(rng.integers(0, len(unique), len(unique)), minlength=len(unique))[inverse].astype(float)
        values = {m: _weighted_ece(conf, corr, weight) for m, (conf, corr) in pooled.items()}
        for method, value in values.items():
            samples[method].append(value)
            diffs[method].append(value - values["first"])
    q = (5, 95)
    return {
        m: {
            "ece_ci90": [round(float(v), 4) for v in np.percentile(samples[m], q)],
            "minus_first_ci90": [round(float(v), 4) for v in np.percentile(diffs[m], q)],
        }
        for m in pooled
    }


def summarise(runs: dict[str, dict[str, np.ndarray]], rows: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per method: pooled ECE (noise floor, title-bootstrap interval), pooled NLL, per-run ECE and T."""
    out: dict[str, Any] = {}
    temps = {name: temperatures(run) for name, run in runs.items()}
    pooled_for_bootstrap: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for method in METHODS:
        pooled_logits, pooled_y, per_run = [], [], {}
        for name, run in runs.items():
            t = temps[name][method]
            logits, y = scored(run, method, t)
            probs = torch.softmax(logits, 1).numpy()
            per_run[name] = {
                "temperature": round(t, 4),
                "oracle_temperature": round(fit_temperature(logits * t, y), 4),
                "ece": round(expected_calibration_error(probs, y), 4),
                "noise_floor": round(ece_noise_floor(probs, draws=100), 4),
                "f1": round(float(f1_score(y, probs.argmax(1), average="weighted")), 4),
            }
            pooled_logits.append(logits)
            pooled_y.append(y)
        logits_all = torch.cat(pooled_logits)
        y_all = np.concatenate(pooled_y)
        probs_all = torch.softmax(logits_all, 1).numpy()
        pooled_for_bootstrap[method] = (probs_all.max(1), (probs_all.argmax(1) == y_all).astype(float))
        by_split = {}
        for kind in ("random", "time", "future"):
            names = [n for n in runs if n.startswith(kind)]
            if names:
                lg = torch.cat([scored(runs[n], method, temps[n][method])[0] for n in names])
                yy = np.concatenate([runs[n]["test_y"] for n in names])
                pp = torch.softmax(lg, 1).numpy()
                by_split[kind] = {
                    "ece": round(expected_calibration_error(pp, yy), 4),
                    "noise_floor": round(ece_noise_floor(pp, draws=100), 4),
                }
        out[method] = {
            "pooled_n": len(y_all),
            "pooled_distinct_titles": len(np.unique(np.concatenate(list(rows.values())))),
            "pooled_ece": round(expected_calibration_error(probs_all, y_all), 4),
            "pooled_noise_floor": round(ece_noise_floor(probs_all, draws=100), 4),
            "pooled_nll": round(nll(logits_all, y_all), 4),
            "by_split": by_split,
            "runs": per_run,
        }
    intervals = bootstrap(pooled_for_bootstrap, np.concatenate([rows[name] for name in runs]))
    for method, interval in intervals.items():
        out[method].update(interval)
    return out


def print_report(results: dict[str, dict[str, Any]]) -> None:
    for smoothing, methods in results.items():
        n = methods["none"]["pooled_n"]
        kinds = list(methods["none"]["by_split"])
        print(f"\nlabel smoothing {smoothing}: {len(methods['none']['runs'])} runs, {n} pooled test titles")
        print(f"({methods['none']['pooled_distinct_titles']} distinct titles; intervals: 90%, resampling titles)")
        print(
            "| method | pooled ECE | 90% interval | minus `first` | noise floor | pooled NLL | "
            + "".join(f"{kind} ECE | " for kind in kinds)
            + "per-run ECE | T per run |"
        )
        print("|---" * (8 + len(kinds)) + "|")
        for method, m in methods.items():
            split = m["by_split"]
            eces = " ".join(f"{r['ece']:.3f}" for r in m["runs"].values())
            temps = " ".join(f"{r['temperature']:.3f}" for r in m["runs"].values())
            print(
                f"| {method} | {m['pooled_ece']:.4f} | {m['ece_ci90'][0]:.4f}-{m['ece_ci90'][1]:.4f} "
                f"| {m['minus_first_ci90'][0]:+.4f} to {m['minus_first_ci90'][1]:+.4f} "
                f"| {m['pooled_noise_floor']:.4f} | {m['pooled_nll']:.4f} "
                + "".join(f"| {split[kind]['ece']:.4f} " for kind in kinds)
                + f"| {eces} | {temps} |"
            )
        print("per run: weighted F1 refit / first model; T fitted on val (first model, cross-fit) and on test:")
        for name, run in methods["none"]["runs"].items():
            t = {m: methods[m]["runs"][name]["temperature"] for m in ("first", "crossfit", "oracle")}
            print(
                f"  {name}: F1 {run['f1']:.4f} / {methods['no_refit']['runs'][name]['f1']:.4f}; "
                f"T val first {t['first']:.3f}, val cross-fit {t['crossfit']:.3f}, test refit {t['oracle']:.3f}, "
                f"test first {methods['no_refit']['runs'][name].get('oracle_temperature', float('nan')):.3f}"
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--splits", nargs="+", default=["random", "time", "future"], choices=["random", "time", "future"])
    p.add_argument("--label-smoothing", type=float, nargs="+", default=[0.1, 0.0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", type=Path, default=ROOT / "bench" / "out" / "calibration_runs")
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "out" / "calibration_study.json")
    p.add_argument("--report-only", action="store_true", help="analyse the cached runs only")
    p.add_argument("--pause-while", type=Path, help="before each run, wait while this file exists")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    corpus = None if args.report_only else load_corpus(args.data)[0]
    raw_labels = read_dataset(args.data).labels
    corpus_tokens = corpus.tokens if corpus is not None else []  # the random and time splits need no tokens
    results: dict[str, dict[str, Any]] = {}
    for smoothing in args.label_smoothing:
        runs: dict[str, dict[str, np.ndarray]] = {}
        rows: dict[str, np.ndarray] = {}
        for kind in args.splits:
            for seed in args.seeds:
                path = args.cache / f"ls{smoothing}-{kind}-seed{seed}.npz"
                if not path.exists() and corpus is not None:
                    while args.pause_while is not None and args.pause_while.exists():
                        time.sleep(20)
                    config = replace(TrainConfig(), seed=seed, label_smoothing=smoothing, threads=args.threads)
                    config.validate()
                    t0 = time.perf_counter()
                    np.savez(path, **collect(config, corpus, raw_labels, kind))
                    print(f"{path.name}: {time.perf_counter() - t0:.0f}s", flush=True)
                if path.exists():
                    runs[f"{kind}-seed{seed}"] = dict(np.load(path))
                    seeded = replace(TrainConfig(), seed=seed)
                    rows[f"{kind}-seed{seed}"] = study_split(kind, raw_labels, corpus_tokens, seeded)[2]
        if runs:
            results[str(smoothing)] = summarise(runs, rows)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1))
    print_report(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
