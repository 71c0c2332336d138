"""Where offline scoring's time goes, stage by stage, on one thread, for both engines in one run.

The in-process engine (``scoring.score.score_file``: the artifact's encoder on every row, then
padding, embedding and the recurrence per batch) and the local engine's two halves (the reader's
token table; the model process's per-token input ids, table lookups and the model) over the
same rows, chunked and batched alike. Reading the CSV is the same for both and left out; the
fixed start cost is timed by ``bench.score_bench``.

    python -m bench.score_stages                  # 100,000 rows (the 10K sample repeated)
    python -m bench.score_stages --rows 20000
"""

from __future__ import annotations

import argparse
import csv
import io
import time
from array import array
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def stage(totals: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    totals[name] = totals.get(name, 0.0) + time.perf_counter() - started


def read_rows(data: Path, rows: int) -> list[list[str]]:
    with data.open(newline="", encoding="utf-8") as fh:
        sample = list(csv.reader(fh))[1:]
    return [sample[i % len(sample)] for i in range(rows)]


def stages(
    predictor: Any, other: Any, rows: list[list[str]], chunk_rows: int, batch_size: int
) -> dict[str, dict[str, float]]:
    """Both engines over ``rows``: ``predictor`` for the in-process one, ``other`` (a second copy,
    so no cache is shared) for the local engine's model process."""
    import numpy as np

    from contract.text import Normalizer
    from scoring import local_engine
    from scoring.model_process import ChunkScorer, one_torch_thread
    from scoring.score import same_length_batches
    from scoring.tokens import TokenTable

    before: dict[str, float] = {}
    after: dict[str, float] = {}
    table = TokenTable(Normalizer(predictor.artifact.preprocessing))
    scorer = ChunkScorer(other, batch_size)
    pool = ThreadPoolExecutor(max_workers=1, initializer=one_torch_thread)
    labels = [line[1:-1] for line in local_engine.csv_lines(["", c] for c in predictor.classes)]
    for start in range(0, len(rows), chunk_rows):
        texts = [row[0] for row in rows[start : start + chunk_rows]]
        # The in-process engine: the encoder on every row, then pad + embed + recurrence per batch.
        with stage(before, "encode every row (words and n-grams)"):
            encoded = [predictor.encoder.encode(t) for t in texts]
        sequences = [ids for ids, _ in encoded]
        lengths = [len(s) for s in sequences]
        order = sorted(range(len(texts)), key=lengths.__getitem__)
        answers = np.empty((len(texts), len(predictor.classes)), dtype=np.float32)
        with stage(before, "pad, embed and run each batch"):
            for batch in same_length_batches(order, lengths, batch_size):
                picked = [sequences[i] for i in batch]
                answers[batch] = predictor.predict_encoded(picked, [False] * len(batch), observe=False).probabilities
        with stage(before, "format the output rows"):
            write_rows(predictor.classes, texts, [e for _, e in encoded], answers)
        # The local engine: the reader's table rows, then the model process's token ids and batches.
        with stage(after, "reader: tokenise into table rows"):
            chunk = table.encode(texts)
        with stage(after, "model: input ids of new tokens"):
            scorer.add_tokens(chunk.new_tokens, chunk.reset)
        with stage(after, "model: look up and run each batch"):
            flat = np.frombuffer(chunk.flat.tobytes(), dtype=np.int32)
            probabilities, futures = scorer.submit(pool, flat, np.frombuffer(chunk.lengths.tobytes(), dtype=np.int32))
            for future in futures:
                future.result()
        with stage(after, "reader: format the output rows"):
            pending = local_engine._Pending(local_engine.row_prefixes([[t] for t in texts]), chunk.empty)
            answer = (
                array("i", probabilities.argmax(axis=1).astype(np.int32).tobytes()),
                array("f", probabilities.tobytes()),
            )
            local_engine._write(io.StringIO(), pending, labels, answer)
    pool.shutdown()
    return {"in-process engine": before, "local engine": after}


def write_rows(classes: Sequence[str], texts: list[str], empty: list[bool], probabilities: Any) -> str:
    out = io.StringIO()
    labels = [classes[i] for i in probabilities.argmax(axis=1).tolist()]
    csv.writer(out, lineterminator="\n").writerows(
        [text, label, "true" if e else "false", *p]
        for text, label, e, p in zip(texts, labels, empty, probabilities.tolist(), strict=True)
    )
    return out.getvalue()


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    from bench.score_bench import DEFAULT_DATA

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts-dir", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CSV with the title first [env NEWS_DATA]")
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args(argv)
    import torch

    from service.inference.predictor import Predictor

    torch.set_num_threads(1)
    predictor, other = (Predictor.load(args.artifacts_dir, device="cpu") for _ in range(2))
    predictor.max_group = 512
    rows = read_rows(args.data, args.rows)
    results = stages(predictor, other, rows, chunk_rows=16384, batch_size=512)
    print(f"{args.rows:,} rows, one thread, model {predictor.version}\n")
    print("| Engine | Stage | s |\n|---|---|---:|")
    for engine, parts in results.items():
        for stage, seconds in parts.items():
            print(f"| {engine} | {stage} | {seconds:.2f} |")
        print(f"| {engine} | **total** | **{sum(parts.values()):.2f}** |")
    return results


if __name__ == "__main__":
    main()
