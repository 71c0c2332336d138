"""Offline scoring (python -m scoring): output shape and order, equality with /predict, bad input."""

from __future__ import annotations

import csv
import io
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from scoring import local_engine, score
from service.api.app import create_app
from service.inference.predictor import Predictor
from tests.service.conftest import CATEGORIES, TITLES, TOKEN_TEXTS, make_settings, read_news
from tests.tolerance import SERVED_ATOL

ROOT = Path(__file__).resolve().parents[2]
PROB_COLUMNS = [f"prob_{c}" for c in CATEGORIES]


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def run(artifacts_dir: Path, src: Path, dst: Path, *extra: str) -> int:
    argv = ["--artifacts-dir", str(artifacts_dir), "--input", str(src), "--output", str(dst)]
    return score.main([*argv, *(extra if "--threads" in extra else (*extra, "--threads", "1"))])


def sample_rows() -> list[list[str]]:
    texts = [*TITLES, *TOKEN_TEXTS, "", 'Quoted "title", with a comma\nand a newline', "Ünïcode café résumé"]
    return [[str(i), text, f"note {i}"] for i, text in enumerate(texts * 3)]


def test_every_row_in_input_order_with_label_empty_and_probabilities(artifacts_dir: Path, tmp_path: Path) -> None:
    rows = sample_rows()
    src = write_csv(tmp_path / "in.csv", ["id", "title", "note"], rows)
    assert run(artifacts_dir, src, tmp_path / "out.csv") == 0
    header, out = read_csv(tmp_path / "out.csv")
    assert header == ["id", "title", "note", "label", "empty", *PROB_COLUMNS]
    assert [[r["id"], r["title"], r["note"]] for r in out] == rows
    for row in out:
        probs = [float(row[c]) for c in PROB_COLUMNS]
        assert math.isclose(sum(probs), 1.0, abs_tol=1e-5)
        assert row["label"] == CATEGORIES[probs.index(max(probs))]
        assert row["empty"] == ("true" if row["title"] in ("", "the of and") else "false")


def test_results_equal_predict_for_the_same_texts(artifacts_dir: Path, tmp_path: Path, news_csv: Path) -> None:
    texts = [*TOKEN_TEXTS, *(r["title"] for r in read_news(news_csv)[:400])]
    src = write_csv(tmp_path / "in.csv", ["title"], [[t] for t in texts])
    assert run(artifacts_dir, src, tmp_path / "out.csv", "--batch-size", "64", "--chunk-rows", "150") == 0
    _, out = read_csv(tmp_path / "out.csv")
    with TestClient(create_app(make_settings(artifacts_dir))) as client:
        served = []
        for i in range(0, len(texts), 50):
            r = client.post("/predict", json={"texts": texts[i : i + 50]})
            served += r.json()["predictions"]
    assert len(out) == len(served) == len(texts)
    for row, pred in zip(out, served, strict=True):
        assert row["label"] == pred["label"]
        assert row["empty"] == str(pred["empty"]).lower()
        for c in CATEGORIES:
            # Same artifact, preprocessing and forward pass; only the batch companions differ,
            # which moves float32 sums by rounding at most.
            assert float(row[f"prob_{c}"]) == pytest.approx(pred["probabilities"][c], abs=SERVED_ATOL)


def test_chunking_and_batch_size_do_not_change_the_output(artifacts_dir: Path, tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["id", "title", "note"], sample_rows())
    assert run(artifacts_dir, src, tmp_path / "a.csv") == 0
    assert run(artifacts_dir, src, tmp_path / "b.csv", "--chunk-rows", "7", "--batch-size", "3", "--threads", "2") == 0
    _, a = read_csv(tmp_path / "a.csv")
    _, b = read_csv(tmp_path / "b.csv")
    assert [r["label"] for r in a] == [r["label"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for c in PROB_COLUMNS:
            assert float(ra[c]) == pytest.approx(float(rb[c]), abs=SERVED_ATOL)


def test_same_length_batches() -> None:
    lengths = [3, 1, 3, 2, 3, 3, 1]
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches = list(score.same_length_batches(order, lengths, 2))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) <= 2 and len({lengths[i] for i in b}) == 1 for b in batches)
    assert [len(b) for b in batches] == [2, 1, 2, 2]


BAD_INPUTS = {
    "missing column": (b"headline,category\nOil climbs,Business\n", "in.csv:1: no column 'title'"),
    "undecodable bytes": (b"title,category\nOil climbs,Business\nCaf\xe9 opens,World\n", "in.csv:3: not valid UTF-8"),
    "unterminated quote": (b'title,category\nOil climbs,Business\n"Never closed,World\n', "in.csv:3: malformed CSV"),
    "stray quote": (b'title,category\nOil climbs,Business\n"Oil" climbs,World\n', "in.csv:3: malformed CSV"),
    "too many fields": (b"title,category\nOil climbs,Business\nOil, climbs,World\n", "in.csv:3: 3 fields"),
    "empty file": (b"", "in.csv:1: empty file"),
    "output column clash": (b"title,label\nOil climbs,Business\n", "in.csv:1: input already has output column"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_error_line_exit_2_and_no_output(
    case: str, artifacts_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    content, message = BAD_INPUTS[case]
    src = tmp_path / "in.csv"
    src.write_bytes(content)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "kept.csv").write_text("previous results\n")
    assert run(artifacts_dir, src, out_dir / "kept.csv", "--chunk-rows", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert sorted(p.name for p in out_dir.iterdir()) == ["kept.csv"]  # no temp file left behind
    assert (out_dir / "kept.csv").read_text() == "previous results\n"  # an existing output is untouched


def test_bad_row_after_many_good_chunks_leaves_nothing(
    artifacts_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.csv"
    src.write_bytes(b"title\n" + b"Oil climbs\n" * 500 + b"Caf\xe9\n")
    assert run(artifacts_dir, src, tmp_path / "out.csv", "--chunk-rows", "64") == 2
    assert "in.csv:502: not valid UTF-8" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


@pytest.mark.parametrize(
    ("src", "dst", "message"),
    [
        ("missing.csv", "out.csv", "missing.csv: cannot open input (no such file)"),
        ("in.csv", "no-such-folder/out.csv", "output folder"),
    ],
)
def test_bad_paths(
    src: str, dst: str, message: str, artifacts_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_csv(tmp_path / "in.csv", ["title"], [["Oil climbs"]])
    assert run(artifacts_dir, tmp_path / src, tmp_path / dst) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("engine", ["local", "in-process"])
def test_progress_line_only_on_a_terminal(engine: str, artifacts_dir: Path, tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["title"], [[t] for t in TITLES * 10])
    terminal, pipe = _Terminal(), io.StringIO()
    if engine == "local":
        folder = artifacts_dir / "20260101T000000Z-000001"
        local_engine.score_local(folder, src, tmp_path / "a.csv", progress=terminal)
        local_engine.score_local(folder, src, tmp_path / "b.csv", progress=pipe)
    else:
        predictor = Predictor.load(artifacts_dir, device="cpu")
        score.score_file(predictor, src, tmp_path / "a.csv", progress=terminal)
        score.score_file(predictor, src, tmp_path / "b.csv", progress=pipe)
    assert terminal.getvalue().startswith("\rin.csv:") and "80 rows" in terminal.getvalue()
    assert terminal.getvalue().endswith("\n") and pipe.getvalue() == ""


def test_module_entry_point(artifacts_dir: Path, tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["title"], [[t] for t in TITLES])
    proc = subprocess.run(
        [sys.executable, "-m", "scoring", "--artifacts-dir", str(artifacts_dir), "--input", str(src)]
        + ["--output", str(tmp_path / "out.csv"), "--threads", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith(f"scored {len(TITLES)} rows") and proc.stdout == ""
    assert len(read_csv(tmp_path / "out.csv")[1]) == len(TITLES)


def test_unusable_model_exits_1_with_one_error_line(
    artifacts_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_csv(tmp_path / "in.csv", ["title"], [["Oil climbs"]])
    assert run(artifacts_dir, src, tmp_path / "out.csv", "--version", "20990101T000000Z-nope00") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot load model from {artifacts_dir}"), err
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--threads", "-1", "--threads: must be 0 (every usable CPU) or a positive integer, got -1"),
        ("--threads", "two", "--threads: invalid _non_negative value: 'two'"),
        ("--batch-size", "0", "--batch-size: must be a positive integer, got 0"),
    ],
)
def test_bad_flag_values_are_one_usage_error_not_a_traceback(
    artifacts_dir: Path, tmp_path: Path, flag: str, value: str, message: str
) -> None:
    src = tmp_path / "in.csv"
    src.write_text("title\nStocks rally\n")
    cmd = [sys.executable, "-m", "scoring", "--artifacts-dir", str(artifacts_dir), "--input", str(src)]
    done = subprocess.run(
        [*cmd, "--output", str(tmp_path / "out.csv"), flag, value], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


_PEAK_RSS = (
    "import atexit, resource, runpy, sys; "
    "atexit.register(lambda: print('peak_kb', *(resource.getrusage(who).ru_maxrss for who in "
    "(resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)), file=sys.stderr)); "
    "sys.argv = ['scoring', *sys.argv[1:]]; runpy.run_module('scoring', run_name='__main__')"
)


def test_memory_stays_flat_as_the_file_grows(artifacts_dir: Path, tmp_path: Path) -> None:
    """Streamed in chunks: 40 times more rows cost no more memory (peak RSS of the reading process
    and of the model process, whose token table starts over past its capacity)."""
    peaks = []
    for rows in (5_000, 200_000):
        src = tmp_path / f"in-{rows}.csv"
        with src.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["title", "category"])
            for i in range(rows):
                writer.writerow([f"{TITLES[i % len(TITLES)]} number {i}", "x"])
        done = subprocess.run(
            [sys.executable, "-c", _PEAK_RSS, "--artifacts-dir", str(artifacts_dir), "--input", str(src)]
            + ["--output", str(tmp_path / f"out-{rows}.csv"), "--chunk-rows", "2048", "--threads", "1"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        peaks.append([int(kb) / 1024 for kb in done.stderr.split("peak_kb")[-1].split()[:2]])
    for process, small, large in zip(("reader", "model"), *peaks, strict=True):
        assert large - small < 25, f"{process} process: peak RSS {small:.0f} MB at 5K rows, {large:.0f} MB at 200K rows"
