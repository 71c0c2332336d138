"""The local engine (reader process + model process): the in-process engine's bytes, no torch in the reader."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from scoring import local_engine, score, tokens
from tests.service.conftest import TITLES, TOKEN_TEXTS, make_artifact

ROOT = Path(__file__).resolve().parents[2]


def edge_rows() -> list[list[str]]:
    """Texts of every kind the reader meets: empty, stopwords only, quoted, multi-line, non-ASCII, long."""
    texts = [*TITLES, *TOKEN_TEXTS, "", "   ", "!!!", 'Quoted "title", with a comma\nand a newline', "Ünïcode café"]
    texts += [f"{TITLES[i % len(TITLES)]} number {i}" for i in range(300)]  # new tokens in every chunk
    return [[str(i), text, f"note {i}"] for i, text in enumerate(texts * 2)]


def write_rows(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "title", "note"])
        writer.writerows(rows)
    return path


_IN_PROCESS = textwrap.dedent(
    """
    import sys, torch
    from pathlib import Path
    from scoring.score import score_file
    from service.inference.predictor import Predictor
    artifacts, src, dst, batch_size, chunk_rows, workers = sys.argv[1:]
    torch.set_num_threads(1)
    predictor = Predictor.load(artifacts, device="cpu")
    predictor.max_group = max(predictor.max_group, int(batch_size))
    sizes = {"batch_size": int(batch_size), "chunk_rows": int(chunk_rows), "workers": int(workers)}
    score_file(predictor, Path(src), Path(dst), **sizes)
    """
)


def in_process(artifacts: Path, src: Path, dst: Path, settings: score.ScoringSettings) -> None:
    """The in-process engine as its command ran it: a fresh process, one torch thread, forward passes
    on ``workers`` threads (a test process's own torch state could change the last bits)."""
    args = [str(artifacts), str(src), str(dst), *map(str, (settings.batch_size, settings.chunk_rows, settings.workers))]
    subprocess.run([sys.executable, "-c", _IN_PROCESS, *args], cwd=ROOT, check=True, timeout=120)


MODELS: dict[str, dict[str, Any]] = {
    "words only": {},
    "character n-grams": {"subword_buckets": 97},
    "n-grams, gru, max pooling": {"subword_buckets": 97, "rnn_type": "gru", "pooling": "max"},
    "n-grams, rnn, last state": {"subword_buckets": 97, "rnn_type": "rnn", "pooling": "last"},
    "n-grams and the wide head": {"subword_buckets": 97, "subword_head": True},
    "n-grams and the linear head": {"subword_buckets": 97, "linear_head": True, "linear_bigram_buckets": 31},
}


@pytest.mark.parametrize("model", list(MODELS))
def test_output_is_the_in_process_engines_byte_for_byte(
    model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same chunks, same batches, same forward pass: the files are identical, including after the
    token table starts over (a small capacity makes it start over several times)."""
    monkeypatch.setattr(tokens, "TABLE_CAPACITY", 40)
    folder = make_artifact(tmp_path / "artifacts", seed=3, **MODELS[model])
    src = write_rows(tmp_path / "in.csv", edge_rows())
    settings = score.ScoringSettings(batch_size=16, chunk_rows=100, workers=2)
    in_process(tmp_path / "artifacts", src, tmp_path / "in-process.csv", settings)
    settings = score.ScoringSettings(batch_size=16, chunk_rows=100, workers=2)
    local_engine.score_local(folder, src, tmp_path / "local.csv", settings)
    expected = (tmp_path / "in-process.csv").read_bytes()
    assert expected.count(b"\n") > 600
    assert (tmp_path / "local.csv").read_bytes() == expected


def test_a_lone_column_of_empty_and_quoted_texts_gives_the_in_process_bytes(tmp_path: Path) -> None:
    """A row that is one empty field, and fields that need quotes, are written as csv.writer writes them."""
    folder = make_artifact(tmp_path / "artifacts", seed=4, subword_buckets=97)
    src = tmp_path / "in.csv"
    with src.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["title"], *([t] for t in ["", 'a "b", c', "x\ny", " lead", *TITLES, ""] * 3)])
    in_process(tmp_path / "artifacts", src, tmp_path / "in-process.csv", score.ScoringSettings())
    local_engine.score_local(folder, src, tmp_path / "local.csv")
    expected = (tmp_path / "in-process.csv").read_bytes()
    assert expected.startswith(b"title,label,") and b"\n," in expected
    assert (tmp_path / "local.csv").read_bytes() == expected


def test_texts_with_no_tokens_alone_in_their_batch_are_scored(tmp_path: Path) -> None:
    """A chunk of texts that are all empty after preprocessing (so every batch is empty texts only)."""
    folder = make_artifact(tmp_path / "artifacts", subword_buckets=97)
    src = write_rows(tmp_path / "in.csv", [[str(i), text, ""] for i, text in enumerate(["", "!!!", "the of"] * 5)])
    summary, _ = local_engine.score_local(folder, src, tmp_path / "out.csv", score.ScoringSettings(batch_size=4))
    with (tmp_path / "out.csv").open(newline="") as fh:
        out = list(csv.DictReader(fh))
    assert summary.rows == len(out) == 15 and {row["empty"] for row in out} == {"true"}
    assert len({tuple(row.values())[3:] for row in out}) == 1  # one answer for "no tokens"


_NO_HEAVY_IMPORTS = textwrap.dedent(
    """
    import sys
    from scoring.score import main
    code = main(sys.argv[1:])
    heavy = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY_SET))
    print("heavy:", ",".join(heavy))
    sys.exit(code)
    """
)
HEAVY = {"torch", "numpy", "prometheus_client", "fastapi", "starlette", "pydantic", "pandas", "sklearn", "nltk"}


def test_the_reading_process_imports_no_torch_and_no_service_libraries(artifacts_dir: Path, tmp_path: Path) -> None:
    """Only the model process pays for torch; the reader starts in a fraction of that."""
    src = write_rows(tmp_path / "in.csv", [[str(i), t, ""] for i, t in enumerate(TITLES)])
    done = subprocess.run(
        [sys.executable, "-c", _NO_HEAVY_IMPORTS.replace("HEAVY_SET", repr(sorted(HEAVY)))]
        + ["--artifacts-dir", str(artifacts_dir), "--input", str(src), "--output", str(tmp_path / "out.csv")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "heavy:", done.stdout


def _hook(folder: Path, body: str) -> dict[str, str]:
    """Environment whose Python runs ``body`` at start-up (sitecustomize): a fault inside the model process."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(textwrap.dedent(body))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)])}


_FAIL_ON_FOURTH_BATCH = """
    import sys
    if "scoring.model_process" in " ".join(sys.orig_argv):
        from scoring import model_process
        forward, calls = model_process.ChunkScorer._forward, []
        def failing(self, *args):
            calls.append(1)
            if len(calls) > 3:
                {fault}
            return forward(self, *args)
        model_process.ChunkScorer._forward = failing
"""


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ('raise RuntimeError("model failed mid-file")', "model failed mid-file"),
        ("import os; os._exit(3)", "the model process exited unexpectedly (exit code 3)"),
    ],
)
def test_a_model_process_that_fails_or_dies_mid_file_leaves_no_output(
    fault: str, message: str, artifacts_dir: Path, tmp_path: Path
) -> None:
    src = write_rows(tmp_path / "in.csv", [[str(i), t, ""] for i, t in enumerate(TITLES * 100)])
    out = tmp_path / "out"
    out.mkdir()
    env = _hook(tmp_path / "hook", _FAIL_ON_FOURTH_BATCH.replace("{fault}", fault))
    done = subprocess.run(
        [sys.executable, "-m", "scoring", "--artifacts-dir", str(artifacts_dir), "--input", str(src)]
        + ["--output", str(out / "scored.csv"), "--chunk-rows", "16", "--batch-size", "4"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and message in done.stderr, done.stderr
    assert list(out.iterdir()) == []


def test_bad_input_stops_the_model_process_at_once(artifacts_dir: Path, tmp_path: Path) -> None:
    """A bad row found while the model still loads ends the run without waiting for it."""
    src = tmp_path / "in.csv"
    src.write_bytes(b'title\nOil climbs\n"Never closed\n')
    started: list[local_engine._ModelProcess] = []
    original = local_engine._ModelProcess.__init__

    def keep(self: local_engine._ModelProcess, *args: Any) -> None:
        original(self, *args)
        started.append(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(local_engine._ModelProcess, "__init__", keep)
        with pytest.raises(score.BadInput, match="in.csv:3: malformed CSV"):
            local_engine.score_local(artifacts_dir / "20260101T000000Z-000001", src, tmp_path / "out.csv")
    assert started[0].process.returncode == -signal.SIGTERM
