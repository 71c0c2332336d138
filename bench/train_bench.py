"""Training benchmark: the lesson's pipeline vs ours vs TF-IDF, side by side in one run.

Same data, same split, same thread count for every arm. Prints seconds per epoch and test
weighted F1 with ratios first, and writes the numbers as JSON for BENCHMARKS.md.

    python -m bench.train_bench                      # 10K sample + 120K (10K x 12) timing
    python -m bench.train_bench --skip-scale         # 10K sample only
    python -m bench.train_bench --scale-only         # 120K timing only
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench.lesson import LessonConfig, run_lesson
from contract.text import load_stopwords
from training.config import TrainConfig
from training.data import read_dataset, sample_rows, stratified_split
from training.pipeline import run

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("NEWS_DATA", ROOT.parent / "shared" / "data" / "news_10k.csv"))
DEFAULT_NLTK = Path(os.environ.get("NLTK_DATA", ROOT.parent / "shared" / "nltk_data"))


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def repeat_csv(source: Path, times: int, target: Path) -> Path:
    """The sample repeated ``times`` times: the full set's size, for timing only."""
    with open(source, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    with open(target, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(rows[0])
        for _ in range(times):
            writer.writerows(rows[1:])
    return target


def run_ours(
    data: Path,
    threads: int,
    seed: int,
    epochs: int | None,
    workdir: Path,
    split: str = "random",
    timing_only: bool = False,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Our pipeline with the default config (or with ``overrides`` of it); ``timing_only`` trains one
    model on the split (no refit, no temperature, so no second split): what an epoch costs does not
    depend on them."""
    config = TrainConfig(
        data=str(data),
        artifacts_dir=str(workdir / "artifacts"),
        seed=seed,
        threads=threads,
        quiet=True,
        plots=False,
        split=split,
    )
    config = replace(config, **(overrides or {}))
    if timing_only:
        config.refit = False
        config.calibrate = False
    if epochs is not None:
        config.epochs = epochs
    started = time.perf_counter()
    result = run(config)
    total = time.perf_counter() - started
    metrics = result.metrics
    seconds = [h["seconds"] for h in metrics["history"]]
    return {
        "seconds_per_epoch": sum(seconds) / len(seconds),
        "epochs_run": len(seconds),
        "best_epoch": metrics["best_epoch"],
        "test_f1": metrics["test"]["overall"]["f1"],
        "baseline_f1": metrics["baseline"]["test"]["overall"]["f1"],
        "baseline_seconds": metrics["timing"].get("baseline_s"),
        "preprocess_seconds": metrics["timing"].get("preprocess_s"),
        "total_seconds": total,
        "rows": metrics["data"]["rows"],
        "splits": metrics.get("splits", {}),
        "calibration": metrics.get("calibration", {}).get("test"),
    }


def run_lesson_arm(
    data: Path, threads: int, seed: int, epochs: int, nltk_data: Path, quiet: bool = True
) -> dict[str, Any]:
    """The lesson's pipeline on exactly the split our pipeline draws for ``seed``."""
    dataset = read_dataset(data)
    keep = sample_rows(len(dataset), None, seed)
    titles = [dataset.titles[i] for i in keep]
    labels = [dataset.labels[i] for i in keep]
    train_idx, val_idx, test_idx = stratified_split(labels, seed)

    def pick(idx: Any) -> tuple[list[str], list[str]]:
        return [titles[i] for i in idx], [labels[i] for i in idx]

    started = time.perf_counter()
    result = run_lesson(
        pick(train_idx),
        pick(val_idx),
        pick(test_idx),
        stopwords=load_stopwords(nltk_data, download=False),
        epochs=epochs,
        seed=seed,
        threads=threads,
        log=None if quiet else print,
        config=LessonConfig(),
    )
    return {
        "seconds_per_epoch": sum(result.seconds_per_epoch) / len(result.seconds_per_epoch),
        "epochs_run": result.epochs_run,
        "test_f1": result.test_f1,
        "preprocess_seconds": result.preprocess_seconds,
        "total_seconds": time.perf_counter() - started,
        "rows": len(titles),
    }


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(results: dict[str, Any]) -> str:
    """Markdown tables, ratios first."""
    lines = []
    for scale in ("10k", "120k"):
        if scale not in results:
            continue
        ours, lesson = results[scale]["ours"], results[scale]["lesson"]
        speed = ours["seconds_per_epoch"] / lesson["seconds_per_epoch"]
        lines += [
            f"### {results[scale]['label']}",
            "",
            f"ours / lesson seconds per epoch: **{speed:.2f}x** (target ≤ 0.35x)",
        ]
        if scale == "10k":
            lines.append(
                f"ours - lesson test F1: **{ours['test_f1'] - lesson['test_f1']:+.3f}**; "
                f"ours - TF-IDF test F1: **{ours['test_f1'] - ours['baseline_f1']:+.3f}** (target ≥ -0.01)"
            )
        lines += [
            "",
            "| pipeline | s / epoch | epochs run | test weighted F1 | whole run s |",
            "|---|---:|---:|---:|---:|",
            f"| lesson (re-implemented) | {_f(lesson['seconds_per_epoch'], 2)} | {lesson['epochs_run']} | "
            f"{_f(lesson['test_f1']) if scale == '10k' else 'timing only'} | {_f(lesson['total_seconds'], 1)} |",
            f"| ours (default config) | {_f(ours['seconds_per_epoch'], 2)} | {ours['epochs_run']} | "
            f"{_f(ours['test_f1']) if scale == '10k' else 'timing only'} | {_f(ours['total_seconds'], 1)} |",
        ]
        for name, arm in results[scale].get("also", {}).items():
            ratio = arm["seconds_per_epoch"] / lesson["seconds_per_epoch"]
            lines.append(
                f"| ours, {name} ({ratio:.2f}x) | {_f(arm['seconds_per_epoch'], 2)} | {arm['epochs_run']} | "
                f"timing only | {_f(arm['total_seconds'], 1)} |"
            )
        if scale == "10k":
            base_f1, base_s = _f(ours["baseline_f1"]), _f(ours["baseline_seconds"], 1)
            lines.append(f"| TF-IDF + logistic regression | - | - | {base_f1} | {base_s} |")
            splits = ours.get("splits", {})
            if splits:
                lines += [
                    "",
                    "Test weighted F1 by split (`--split both`: time = train on the earliest 70% of the file,",
                    "validate on the next 15%, test on the latest 15%; random = stratified):",
                    "",
                    "| split | ours | TF-IDF + LR (same rows) | ours - TF-IDF | ECE before / after temperature |",
                    "|---|---:|---:|---:|---|",
                ]
                for kind in ("random", "time"):
                    if kind in splits:
                        sp = splits[kind]
                        cal = sp.get("calibration", {})
                        ece = f"{_f(cal.get('ece_before'))} / {_f(cal.get('ece_after'))}" if cal else "-"
                        lines.append(
                            f"| {kind} | {_f(sp['test_f1'])} | {_f(sp['baseline_test_f1'])} | "
                            f"{sp['test_f1'] - sp['baseline_test_f1']:+.3f} | {ece} |"
                        )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CSV (default: %(default)s)")
    parser.add_argument("--nltk-data", type=Path, default=DEFAULT_NLTK, help="NLTK data (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for every arm (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed, help="split and init seed (default: %(default)s)")
    parser.add_argument("--lesson-epochs", type=int, default=50, help="lesson's max epochs (default: its own 50)")
    parser.add_argument("--skip-scale", action="store_true", help="skip the 120,000-row timing")
    parser.add_argument("--scale-only", action="store_true", help="only the 120,000-row timing")
    parser.add_argument("--scale-times", type=int, default=12, help="repeat count for the scale file (default 12)")
    parser.add_argument("--scale-lesson-epochs", type=int, default=1, help="lesson epochs at scale (default 1)")
    parser.add_argument("--scale-epochs", type=int, default=None, help="our max epochs at scale (default: config's)")
    parser.add_argument(
        "--also",
        nargs="+",
        default=[],
        metavar="SETTING=VALUE",
        help="at scale, one more arm of ours per setting, the default config with that one TrainConfig field "
        "changed (a JSON value: --also batch_size=128 sparse_embeddings=true), timed in the same run",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "train_bench.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"machine": machine(), "threads": args.threads, "seed": args.seed}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.scale_only:
            print(f"[10k] ours on {args.data} ...", flush=True)
            ours = run_ours(args.data, args.threads, args.seed, None, work / "ours10k", split="both")
            print(f"[10k] lesson (up to {args.lesson_epochs} epochs) ...", flush=True)
            lesson = run_lesson_arm(args.data, args.threads, args.seed, args.lesson_epochs, args.nltk_data)
            label = f"10K sample ({ours['rows']} rows, 70/15/15 split)"
            results["10k"] = {"label": label, "ours": ours, "lesson": lesson}
        if not args.skip_scale:
            big = repeat_csv(args.data, args.scale_times, work / "news_repeated.csv")
            print(f"[120k] ours on {big} ...", flush=True)
            ours_big = run_ours(big, args.threads, args.seed, args.scale_epochs, work / "ours120k", timing_only=True)
            print(f"[120k] lesson ({args.scale_lesson_epochs} epoch) ...", flush=True)
            lesson_big = run_lesson_arm(big, args.threads, args.seed, args.scale_lesson_epochs, args.nltk_data)
            also = {}
            for setting in args.also:
                name, value = setting.split("=", 1)
                print(f"[120k] ours with {setting} ...", flush=True)
                also[setting] = run_ours(
                    big, args.threads, args.seed, args.scale_epochs, work / f"ours120k-{name}", timing_only=True,
                    overrides={name: json.loads(value)},
                )  # fmt: skip
            results["120k"] = {
                "label": f"{ours_big['rows']} rows (10K sample x {args.scale_times}, timing only)",
                "ours": ours_big,
                "lesson": lesson_big,
                "also": also,
            }
    report = table(results)
    results["markdown"] = report
    print()
    print(f"machine: {results['machine']}, threads {args.threads}")
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
