"""``python -m scoring``: classify every row of a CSV file offline, with the server's Predictor.

    python -m scoring --artifacts-dir artifacts --input news.csv --output scored.csv

The file is streamed in chunks of ``--chunk-rows`` rows, so memory stays flat for any file
size. Each chunk is encoded once, sorted by token length and cut into ``--batch-size`` batches
(rows of one length need no padding and no packing), then written back in input order: every
input column, then ``label``, ``empty`` and one ``prob_<Category>`` column per class. The
answers are the ones ``POST /predict`` gives for the same texts (same artifact, same
preprocessing, same forward pass); probabilities agree to float32 rounding, since a text's
batch companions differ.

Everything is written to a hidden temporary file next to the output and renamed into place
at the end: a bad row, a crash or Ctrl-C leaves no partial output behind. Bad input ends the
run with one ``error: FILE:LINE: ...`` line and exit status 2; an unusable model with exit 1.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, TextIO

from contract.artifact import ArtifactError, resolve_version

if TYPE_CHECKING:  # this process never imports torch: the model runs in scoring.model_process
    from _csv import Writer as CsvWriter

    import numpy as np

    from service.inference.predictor import Predictor

EXIT_BAD_INPUT = 2
EXIT_BAD_MODEL = 1
# A physical line longer than this is refused rather than read into memory whole (the csv
# module would refuse its fields anyway: its default field limit is 128 Ki characters).
MAX_LINE_BYTES = 1 << 20
PROGRESS_EVERY_S = 0.5


class BadInput(Exception):
    """The input (or output location) is unusable; the message names the file and line."""


@dataclass(frozen=True)
class Summary:
    rows: int
    seconds: float
    output: Path
    model_ready_s: float | None = None  # local engine: from the start until the model process could compute


@dataclass(frozen=True)
class ScoringSettings:
    """How a file is cut and computed; every engine gives the same bytes for the same settings."""

    text_column: str = "title"
    batch_size: int = 512
    chunk_rows: int = 16384
    workers: int = 1


def open_input(input_path: Path) -> IO[bytes]:
    """The input, opened for :class:`_Lines`; an unreadable file is :class:`BadInput`."""
    try:
        return open(input_path, "rb")  # noqa: SIM115 - the caller closes it, after the rename
    except OSError as exc:
        raise BadInput(f"{input_path}: cannot open input ({exc.strerror or exc})") from None


class _Lines:
    """Decoded physical lines of a binary file, counting line numbers and bytes as they go.

    Decoding line by line (instead of through a TextIOWrapper) lets an undecodable byte be
    reported on its own line; the csv reader sees exactly what ``open(newline="")`` gives.
    """

    def __init__(self, handle: IO[bytes], name: str) -> None:
        self.handle = handle
        self.name = name
        self.number = 0
        self.bytes = 0

    def __iter__(self) -> Iterator[str]:
        readline = self.handle.readline
        while raw := readline(MAX_LINE_BYTES + 1):
            self.number += 1
            self.bytes += len(raw)
            if len(raw) > MAX_LINE_BYTES:
                raise BadInput(f"{self.name}:{self.number}: line longer than {MAX_LINE_BYTES} bytes")
            try:
                yield raw.decode("utf-8-sig" if self.number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise BadInput(
                    f"{self.name}:{self.number}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} "
                    "of the line); re-encode the file as UTF-8"
                ) from None


class _Records:
    """CSV records with the line each one starts on; malformed CSV becomes :class:`BadInput`."""

    def __init__(self, lines: _Lines) -> None:
        self.lines = lines
        self.reader = csv.reader(lines, strict=True)

    def __iter__(self) -> Iterator[tuple[int, list[str]]]:
        name = self.lines.name
        while True:
            start = self.reader.line_num + 1
            try:
                record = next(self.reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise BadInput(f"{name}:{self.reader.line_num}: malformed CSV ({exc})") from None
            if record:  # a blank line is not a row
                yield start, record


class _Progress:
    """One self-overwriting stderr line while stderr is a terminal (the service image has no tqdm)."""

    def __init__(self, stream: TextIO, name: str, total_bytes: int) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.name = name
        self.total = total_bytes
        self.started = time.perf_counter()
        self.last = 0.0

    def update(self, rows: int, bytes_read: int, final: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (not final and now - self.last < PROGRESS_EVERY_S):
            return
        self.last = now
        share = f" {min(100.0, 100.0 * bytes_read / self.total):5.1f}%" if self.total else ""
        rate = rows / max(now - self.started, 1e-9)
        end = "\n" if final else ""
        self.stream.write(f"\r{self.name}:{share} {rows:,} rows, {rate:,.0f} rows/s{end}")
        self.stream.flush()


def check_paths(input_path: Path, output_path: Path) -> None:
    """Refuse a missing input or an impossible output before any work (and before loading a model)."""
    if not input_path.is_file():
        raise BadInput(f"{input_path}: cannot open input ({'is a folder' if input_path.is_dir() else 'no such file'})")
    if not output_path.parent.is_dir():
        raise BadInput(f"{output_path}: output folder {output_path.parent} does not exist")
    if output_path.is_dir():
        raise BadInput(f"{output_path}: is a folder, not a file")


def read_header(
    records: Iterator[tuple[int, list[str]]], name: str, text_column: str, classes: Sequence[str]
) -> list[str]:
    """The header record, refused without the text column or with a column the output adds."""
    first = next(records, None)
    if first is None:
        raise BadInput(f"{name}:1: empty file (expected a header row with a {text_column!r} column)")
    line, header = first
    if text_column not in header:
        raise BadInput(f"{name}:{line}: no column {text_column!r} (columns: {', '.join(header)})")
    clashes = sorted(set(header) & set(output_columns(header, classes)[len(header) :]))
    if clashes:
        raise BadInput(f"{name}:{line}: input already has output column(s) {', '.join(clashes)}; rename them")
    return header


def output_columns(header: Sequence[str], classes: Sequence[str]) -> list[str]:
    return [*header, "label", "empty", *(f"prob_{c}" for c in classes)]


def score_file(
    predictor: Predictor,
    input_path: Path,
    output_path: Path,
    *,
    text_column: str = "title",
    batch_size: int = 512,
    chunk_rows: int = 16384,
    workers: int = 1,
    progress: TextIO | None = None,
) -> Summary:
    """Score ``input_path`` into ``output_path`` (atomically); raises :class:`BadInput`.

    ``workers`` threads run forward passes concurrently (give torch one intra-op thread each:
    for batches this small, separate batches on separate CPUs scale far better than one batch
    split across CPUs, and they do not spin against each other on a busy machine).
    """
    started = time.perf_counter()
    name = str(input_path)
    check_paths(input_path, output_path)
    with open_input(input_path) as handle:
        total = os.fstat(handle.fileno()).st_size
        lines = _Lines(handle, name)
        records = iter(_Records(lines))
        header = read_header(records, name, text_column, predictor.classes)
        columns = output_columns(header, predictor.classes)
        text_index = header.index(text_column)
        tracker = _Progress(progress or sys.stderr, input_path.name, total)
        rows = 0
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="score-model")
        try:
            with _atomic_output(output_path) as out:
                writer = csv.writer(out, lineterminator="\n")
                writer.writerow(columns)
                # Chunk k is written while chunk k+1's batches run: reading, encoding and
                # writing (Python, holding the GIL) overlap the forward passes (torch, not).
                pending: _Chunk | None = None
                for chunk in _chunks(records, len(header), chunk_rows, name):
                    submitted = _Chunk.submit(pool, predictor, chunk, text_index, batch_size)
                    if pending is not None:
                        rows += pending.write(writer, predictor.classes)
                        tracker.update(rows, lines.bytes)
                    pending = submitted
                if pending is not None:
                    rows += pending.write(writer, predictor.classes)
                tracker.update(rows, lines.bytes, final=True)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return Summary(rows, time.perf_counter() - started, output_path)


def same_length_batches(order: Sequence[int], lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Cut rows sorted by length into batches of one length each, at most ``batch_size`` rows.

    A batch without padding runs the plain recurrence (no packing), the fastest forward pass;
    a 16K-row chunk of headlines has only a few dozen distinct lengths.
    """
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) >= batch_size or lengths[i] != lengths[batch[0]]):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _chunks(
    records: Iterator[tuple[int, list[str]]], fields: int, chunk_rows: int, name: str
) -> Iterator[list[list[str]]]:
    chunk: list[list[str]] = []
    for line, record in records:
        if len(record) != fields:
            raise BadInput(f"{name}:{line}: {len(record)} fields, but the header has {fields}")
        chunk.append(record)
        if len(chunk) >= chunk_rows:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass
class _Chunk:
    """One chunk in flight: its rows, empty flags, and the forward passes filling its probabilities."""

    records: list[list[str]]
    empty: list[bool]
    probabilities: np.ndarray
    futures: list[Future[None]]

    @classmethod
    def submit(
        cls, pool: ThreadPoolExecutor, predictor: Predictor, records: list[list[str]], text_index: int, batch_size: int
    ) -> _Chunk:
        """Encode once, sort by length, queue same-length batches on ``pool``."""
        import numpy as np

        encode = predictor.encoder.encode
        encoded = [encode(record[text_index]) for record in records]
        sequences = [ids for ids, _ in encoded]
        empty = [e for _, e in encoded]
        lengths = [len(ids) for ids in sequences]
        order = sorted(range(len(records)), key=lengths.__getitem__)
        probabilities = np.empty((len(records), len(predictor.classes)), dtype=np.float32)

        def run(rows: list[int]) -> None:
            # Unobserved, predict_encoded only reads the model, so the workers share one
            # Predictor; rows of different batches are disjoint, so no lock for the array.
            result = predictor.predict_encoded([sequences[i] for i in rows], [empty[i] for i in rows], observe=False)
            probabilities[rows] = result.probabilities

        futures = [pool.submit(run, rows) for rows in same_length_batches(order, lengths, batch_size)]
        return cls(records, empty, probabilities, futures)

    def write(self, writer: CsvWriter, classes: list[str]) -> int:
        """Wait for the chunk's batches, then write its rows in input order; returns the row count."""
        for future in self.futures:
            future.result()
        labels = [classes[i] for i in self.probabilities.argmax(axis=1).tolist()]
        flags = ["true" if e else "false" for e in self.empty]
        writer.writerows(
            [*record, label, flag, *probs]
            for record, label, flag, probs in zip(self.records, labels, flags, self.probabilities.tolist(), strict=True)
        )
        return len(self.records)


class _atomic_output:  # noqa: N801 - used like open()
    """A temporary file in the output's folder, renamed over ``path`` only on success."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp: Path | None = None
        self.handle: TextIO | None = None

    def __enter__(self) -> TextIO:
        folder = self.path.parent
        try:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{self.path.name}.", suffix=".part")
        except OSError as exc:
            raise BadInput(f"{self.path}: cannot write in {folder} ({exc.strerror or exc})") from None
        self.tmp = Path(tmp)
        self.handle = open(fd, "w", encoding="utf-8", newline="")  # noqa: SIM115 - closed in __exit__
        return self.handle

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self.handle is not None and self.tmp is not None
        try:
            self.handle.close()
            if exc_type is None:
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(self.tmp, 0o666 & ~umask)  # mkstemp's 0600 is for the temp file only
                os.replace(self.tmp, self.path)
        finally:
            if self.tmp.exists():
                self.tmp.unlink()


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (every usable CPU) or a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scoring",
        description="Classify every row of a CSV file with a model artifact (the same predictor as the server).",
    )
    parser.add_argument("--artifacts-dir", type=Path, required=True, help="folder of model versions")
    parser.add_argument("--version", default="latest", help="version folder name, or latest (default)")
    parser.add_argument("--input", type=Path, required=True, help="CSV file with a header row (UTF-8)")
    parser.add_argument("--output", type=Path, required=True, help="CSV file to write (replaced atomically)")
    parser.add_argument("--text-column", default="title", help="column holding the text (default: title)")
    parser.add_argument("--batch-size", type=_positive, default=512, help="texts per forward pass (default 512)")
    parser.add_argument(
        "--chunk-rows", type=_positive, default=16384, help="rows read, sorted and written at a time (default 16384)"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default auto")
    parser.add_argument(
        "--threads",
        type=_non_negative,
        default=0,
        help="CPUs to use: model worker threads, one torch thread each; 0 = every usable CPU (default)",
    )
    parser.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local (default) or ray: the same files, scored on a Ray cluster (needs the ray extra)",
    )
    parser.add_argument("--ray-address", default=None, help="with --engine ray: the cluster's address, HOST:PORT")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.engine == "ray":
        from scoring.ray_engine import run_cli

        return run_cli(args)
    from scoring.local_engine import ModelUnusable, score_local
    from service.inference.threads import available_cpus

    try:
        check_paths(args.input, args.output)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        folder = resolve_version(args.artifacts_dir, args.version)
        settings = ScoringSettings(args.text_column, args.batch_size, args.chunk_rows, args.threads or available_cpus())
        summary, version = score_local(folder, args.input, args.output, settings, device=args.device)
    except (ArtifactError, ModelUnusable) as exc:
        print(f"error: cannot load model from {args.artifacts_dir}: {exc}", file=sys.stderr)
        return EXIT_BAD_MODEL
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print_summary(summary, version)
    return 0


def print_summary(summary: Summary, version: str, where: str = "") -> None:
    """The closing stderr line of a run: rows, time, rate, model (and ``where``: the engine's cluster)."""
    rate = summary.rows / summary.seconds if summary.seconds else 0.0
    ready = "" if summary.model_ready_s is None else f"; model ready after {summary.model_ready_s:.2f} s"
    print(
        f"scored {summary.rows:,} rows in {summary.seconds:.2f} s ({rate:,.0f} rows/s{ready}){where} with model "
        f"{version} -> {summary.output}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main())
