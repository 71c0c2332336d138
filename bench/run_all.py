"""One command for every benchmark: training, then serving, then ``BENCHMARKS.md`` at the repo root.

python -m bench.run_all                 # full run (training bench takes a while)
python -m bench.run_all --quick         # smoke run: training on 10K only, short serving points
python -m bench.run_all --skip-train    # serving only (keeps the training section if its JSON exists)

Offline scoring (bench.score_bench), the drift-counter A/B (bench.drift_bench) and the
access-log A/B (bench.access_log_bench) run after the serving bench; ``--skip-score`` /
``--skip-drift`` / ``--skip-access-log`` keep their previous JSON instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"


def describe_machine() -> str:
    """The machine writing the report: CPU model and count, memory, OS and Python (no load: it changes)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
        mem = f", {mem_kb / 1024**2:.0f} GiB RAM"
    except (OSError, StopIteration):
        mem = ""
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} CPUs{mem}; {system}, Python {platform.python_version()}"


def measured_on(result: dict[str, Any]) -> str:
    """When and where one benchmark ran, from the stamp its JSON carries."""
    found = result.get("machine")
    if isinstance(found, dict):
        cpus = found.get("cpus") or found.get("cores_usable")
        parts = [f"{cpus} CPUs ({found.get('cpu')})" if cpus else str(found.get("cpu", "unknown CPU"))]
        parts += [f"{label} {found[k]}" for k, label in (("python", "Python"), ("torch", "torch")) if found.get(k)]
        load = found.get("load_avg_at_start")
        if load:
            parts.append(f"load average {load[0]} at the start")
        where = ", ".join(parts)
    else:
        where = str(found or "an unrecorded machine")
    date = result.get("date") or (found.get("date") if isinstance(found, dict) else None) or "an unrecorded date"
    return f"Measured {date} on {where}."


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


HEADER = [
    "# Benchmarks",
    "",
    "Current numbers only. `make bench` (`python -m bench.run_all`) reruns the benchmarks of the first",
    "sections and rewrites this file from the JSON each leaves in `bench/out/`; every section names the",
    "command that reproduces its tables on its own. The sections after them (marked *carried over*)",
    "come from commands that compare two source trees or need other hardware; `make bench` keeps them",
    "as they are.",
    "",
    "Server, load generator and benchmark driver share the machine's CPUs and nothing is pinned, so",
    "absolute numbers depend on what else runs: compare the ratios within one run, which is why every",
    "comparison runs its arms side by side, interleaved.",
    "",
]


def section(title: str, result: dict[str, Any] | None, cmd: str, json_name: str, intro: str = "") -> list[str]:
    """One benchmark's section: the command beside its tables, where it ran, then the tables."""
    lines = [f"## {title}", ""]
    if result is None:
        return [*lines, f"Not run yet: `{cmd}` writes `bench/out/{json_name}`.", ""]
    lines += [f"Command: `{cmd}` (writes `bench/out/{json_name}`). {measured_on(result)}"]
    if result.get("model"):
        lines[-1] += f" Model: {result['model']}."
    if intro:
        lines += ["", intro]
    return [*lines, "", result["markdown"].rstrip("\n"), ""]


def write_report(
    path: Path,
    train: dict[str, Any] | None,
    serve: dict[str, Any] | None,
    train_cmd: str,
    serve_cmd: str,
    extra: Sequence[tuple[str, dict[str, Any] | None, str, str]] = (),
) -> Path:
    lines = [*HEADER, f"Report written on: {describe_machine()}.", ""]
    lines += section(
        "Training",
        train,
        train_cmd,
        "train_bench.json",
        "The lesson's pipeline (re-implemented in `bench/lesson.py`), ours and TF-IDF + logistic regression "
        "on the same data, split and thread count.",
    )
    intro = ""
    if serve is not None:
        settings = serve.get("settings", {})
        intro = (
            f"Load generator: {settings.get('engine')} ({settings.get('workers')} threads/processes), "
            f"{settings.get('duration_s')} s per slice after {settings.get('warmup_s')} s warm-up, closed loop "
            "(each client sends its next request when the previous one is answered), one real headline per "
            "request cycling through the data set. Every server of a comparison is up at once and the load "
            "visits them in turn."
        )
    lines += section("Serving", serve, serve_cmd, "serve_bench.json", intro)
    plot = serve.get("plot") if serve is not None else None
    if plot:
        lines += [f"![throughput vs p99]({os.path.relpath(ROOT / plot, path.parent)})", ""]
    for title, result, cmd, text in extra:
        name = cmd.split()[2].removeprefix("bench.") + ".json"
        lines += section(title, result, cmd, name, text)
    lines += kept_sections(path)
    path.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")
    return path


KEPT_SECTIONS = ("## Model quality", "## Calibration", "## Hostile clients", "## Containers", "## GPU")


def kept_sections(path: Path) -> list[str]:
    """Sections from commands this one cannot rerun (two source trees, a GPU, a container engine,
    hours of training): carried over from the existing report unchanged."""
    try:
        old = path.read_text(encoding="utf-8")
    except OSError:
        return []
    kept: list[str] = []
    for title in KEPT_SECTIONS:  # a heading that starts with the title ("## GPU", "## GPU check")
        found = re.search(rf"^{re.escape(title)}\b.*$", old, flags=re.MULTILINE)
        if found:
            end = old.find("\n## ", found.start())
            kept += [old[found.start() : end if end >= 0 else len(old)].rstrip("\n"), ""]
    return kept


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-train", action="store_true", help="do not run the training bench")
    parser.add_argument("--skip-serve", action="store_true", help="do not run the serving bench")
    parser.add_argument("--skip-score", action="store_true", help="do not run the offline scoring bench")
    parser.add_argument("--skip-drift", action="store_true", help="do not run the drift-counter A/B bench")
    parser.add_argument("--skip-access-log", action="store_true", help="do not run the access-log A/B bench")
    parser.add_argument("--quick", action="store_true", help="short smoke runs of both")
    parser.add_argument("--serve-duration", type=float, default=None, help="seconds per serving load point")
    parser.add_argument("--artifacts-dir", type=Path, default=None, help="passed to the serving bench")
    parser.add_argument("--report", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)

    train_argv = ["--skip-scale", "--lesson-epochs", "5"] if args.quick else []
    serve_argv = ["--quick"] if args.quick else []
    if args.serve_duration is not None:
        serve_argv += ["--duration", str(args.serve_duration)]
    if args.artifacts_dir is not None:
        serve_argv += ["--artifacts-dir", str(args.artifacts_dir)]
    train_cmd = " ".join(["python -m bench.train_bench", *train_argv])
    serve_cmd = " ".join(["python -m bench.serve_bench", *serve_argv])

    if args.skip_train:
        train = _load(OUT / "train_bench.json")
    else:
        from bench import train_bench

        train = train_bench.main(train_argv)
    if args.skip_serve:
        serve = _load(OUT / "serve_bench.json")
    else:
        from bench import serve_bench

        serve = serve_bench.main(serve_argv)
    quick = ["--quick"] if args.quick else []
    score_cmd = " ".join(["python -m bench.score_bench", *quick])
    drift_cmd = " ".join(["python -m bench.drift_bench", *quick])
    if args.skip_score:
        score = _load(OUT / "score_bench.json")
    else:
        from bench import score_bench

        score = score_bench.main(quick)
    if args.skip_drift:
        drift = _load(OUT / "drift_bench.json")
    else:
        from bench import drift_bench

        drift = drift_bench.main(quick)
    access_cmd = " ".join(["python -m bench.access_log_bench", *quick])
    if args.skip_access_log:
        access = _load(OUT / "access_log_bench.json")
    else:
        from bench import access_log_bench

        access = access_log_bench.main(quick)
    extra = [
        (
            "Offline scoring",
            score,
            score_cmd,
            "Generated CSV files (the 10K sample repeated) in a temporary folder; one `python -m "
            "scoring` process per size, pinned to 2 CPUs, timed from process start to exit; the best "
            "of the runs per size.",
        ),
        (
            "Drift counters",
            drift,
            drift_cmd,
            "Two servers, identical but for `--drift-metrics` / `--no-drift-metrics`, loaded in turn "
            "(ABBA) in one run.",
        ),
        (
            "Access log",
            access,
            access_cmd,
            "Four servers, two with the access log on and two with `--no-access-log`, loaded in a "
            "rotating order in one run; the pairs within an arm give the method's own noise (A/A).",
        ),
    ]
    report = write_report(args.report, train, serve, train_cmd, serve_cmd, extra)
    print(f"wrote {report}")
    return report


if __name__ == "__main__":
    main()
