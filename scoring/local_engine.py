"""Local scoring in two processes: this one reads, tokenises and writes; a model process computes.

This process never imports torch. It starts the model process first (which spends its first
second or two importing torch and loading the artifact), reads the artifact's text settings
itself, and meanwhile reads and tokenises the first chunks; they go to the model process once
it is ready, and the answers come back chunk by chunk, in order, to be written while later
chunks compute. At most ``IN_FLIGHT_CHUNKS`` chunks are held at once, so memory stays flat.

The output is the in-process engine's (``scoring.score.score_file``), byte for byte: the same
chunks, the same same-length batches and the same forward pass (a test compares the files).
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from array import array
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn, TextIO

from contract.artifact import LABELS, PREPROCESSING, ArtifactError, verify_artifact
from contract.text import LabelEncoder, Normalizer, PreprocessSettings
from scoring import model_process
from scoring.score import (
    ScoringSettings,
    Summary,
    _atomic_output,
    _chunks,
    _Lines,
    _Progress,
    _Records,
    check_paths,
    open_input,
    output_columns,
    read_header,
)
from scoring.tokens import TokenTable

if TYPE_CHECKING:
    pass

# Chunks read but not yet written. The reader runs this far ahead while the model process
# starts, and no further: each chunk's rows wait here for their answers.
IN_FLIGHT_CHUNKS = 8


class ModelUnusable(Exception):
    """The model process could not load the artifact; the message says why."""


@dataclass(frozen=True)
class TextSide:
    """What the reader needs from an artifact: its normaliser settings and class names."""

    preprocessing: PreprocessSettings
    classes: list[str]


def read_text_side(folder: Path) -> TextSide:
    """Verify the version folder and read its preprocessing and labels (no torch); raises ArtifactError."""
    verify_artifact(folder)
    try:
        preprocessing = PreprocessSettings.from_dict(json.loads((folder / PREPROCESSING).read_text(encoding="utf-8")))
        labels = LabelEncoder.from_dict(json.loads((folder / LABELS).read_text(encoding="utf-8")))
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{folder}: invalid artifact contents ({exc})") from exc
    return TextSide(preprocessing, labels.classes)


@dataclass
class _Pending:
    """A chunk waiting for its answers: each row's input fields already in CSV, and its empty flags."""

    prefixes: list[str]
    empty: list[bool]


def csv_lines(rows: Iterable[Sequence[str]]) -> list[str]:
    """Each row exactly as the output's ``csv.writer`` writes it (with its line end)."""
    lines: list[str] = []

    class Sink:
        write = lines.append

    csv.writer(Sink, lineterminator="\n").writerows(rows)
    return lines


def row_prefixes(records: list[list[str]]) -> list[str]:
    """The input fields of each row in CSV, formatted while the model still computes.

    Written with one more (empty) field and cut before it: a field is quoted or not by its own
    content, so this is the row's start as the writer writes the whole row (a lone empty field,
    which the writer would quote when alone, is no exception here).
    """
    return [line[:-2] for line in csv_lines([*record, ""] for record in records)]


class _ModelProcess:
    """The model process and the reader's side of its pipe: chunks out, answers back in order."""

    def __init__(self, folder: Path, device: str, workers: int, batch_size: int) -> None:
        # A fresh interpreter (not multiprocessing): nothing inherited, no fork hazards, and the
        # caller's main module is not imported again, so any script may call score_local.
        ours, theirs = socket.socketpair()
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        start = "import sys; from scoring.model_process import main; main(sys.argv[1:])"
        command = [sys.executable, "-c", start, str(theirs.fileno()), str(folder), device]
        self.process = subprocess.Popen(
            [*command, str(workers), str(batch_size)], pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL
        )
        theirs.close()
        self.conn = Connection(ours.detach())
        self.version: str | None = None
        self.ready_at = 0.0  # the model process's time.time() when it could compute
        self.unsent: deque[tuple[Any, ...]] = deque()

    def send(self, message: tuple[Any, ...] | None) -> None:
        """Send now when the model is ready, else keep it until it is."""
        self.unsent.append(message)  # type: ignore[arg-type]
        self._flush()

    def _flush(self) -> None:
        while self.version is not None and self.unsent:
            try:
                self.conn.send(self.unsent.popleft())
            except OSError:  # a broken pipe: the model process is gone
                self._gone()

    def wait_ready(self) -> str:
        """Block until the model has loaded (or failed to: ModelUnusable); returns its version."""
        while self.version is None:
            self._receive()
        return self.version

    def poll(self) -> None:
        """Take the ready message if it has come (never blocks)."""
        if self.version is None and self.conn.poll():
            self._receive()

    def answer(self) -> tuple[array[int], array[float]]:
        """The next chunk's answer: (label per row, probabilities row-major); blocks."""
        while True:
            message = self._receive()
            if message[0] == model_process.RESULT:
                labels: array[int] = array("i")
                labels.frombytes(message[2])
                probabilities: array[float] = array("f")
                probabilities.frombytes(message[3])
                return labels, probabilities

    def _receive(self) -> tuple[Any, ...]:
        try:
            message: tuple[Any, ...] = self.conn.recv()
        except (EOFError, OSError):
            self._gone()
        kind = message[0]
        if kind == model_process.ERROR:
            raise ModelUnusable(message[1])
        if kind == model_process.FAILED:
            raise RuntimeError(f"the model process failed:\n{message[1]}")
        if kind == model_process.READY:
            self.version, self.ready_at = message[1], float(message[2])
            self._flush()
        return message

    def _gone(self) -> NoReturn:
        code = self.process.wait(10)
        raise RuntimeError(f"the model process exited unexpectedly (exit code {code})") from None

    def close(self, finished: bool) -> None:
        """Wait for a ``finished`` model process to exit; stop one that is still working (an error here)."""
        if not finished:
            self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.conn.close()


def score_local(
    folder: Path,
    input_path: Path,
    output_path: Path,
    settings: ScoringSettings = ScoringSettings(),  # noqa: B008 - frozen, shared safely
    *,
    device: str = "auto",
    progress: TextIO | None = None,
) -> tuple[Summary, str]:
    """Score ``input_path`` into ``output_path`` (atomically) with the model in ``folder``.

    Returns the summary and the model's version; raises :class:`BadInput` (the input) or
    :class:`ModelUnusable` (the model process could not load the artifact).
    """
    started, started_at = time.perf_counter(), time.time()
    check_paths(input_path, output_path)
    # First: the model process's torch import is the long pole of the start.
    model = _ModelProcess(folder, device, settings.workers, settings.batch_size)
    finished = False
    try:
        text_side = read_text_side(folder)
        with open_input(input_path) as handle:
            rows = _score_stream(model, handle, str(input_path), output_path, text_side, settings, progress)
        finished = True
    finally:
        model.close(finished)
    version = model.wait_ready()
    return Summary(rows, time.perf_counter() - started, output_path, model.ready_at - started_at), version


def _score_stream(
    model: _ModelProcess,
    handle: IO[bytes],
    name: str,
    output_path: Path,
    text_side: TextSide,
    settings: ScoringSettings,
    progress: TextIO | None,
) -> int:
    total = os.fstat(handle.fileno()).st_size
    lines = _Lines(handle, name)
    records = iter(_Records(lines))
    header = read_header(records, name, settings.text_column, text_side.classes)
    text_index = header.index(settings.text_column)
    table = TokenTable(Normalizer(text_side.preprocessing))
    tracker = _Progress(progress or sys.stderr, Path(name).name, total)
    pending: deque[_Pending] = deque()
    rows = 0
    # Each class name as a CSV field, as the writer would write it after another field.
    labels = [line[1:-1] for line in csv_lines(["", c] for c in text_side.classes)]
    with _atomic_output(output_path) as out:
        csv.writer(out, lineterminator="\n").writerow(output_columns(header, text_side.classes))
        seq = 0
        for chunk in _chunks(records, len(header), settings.chunk_rows, name):
            encoded = table.encode([record[text_index] for record in chunk])
            model.send((seq, encoded.reset, encoded.new_tokens, encoded.flat.tobytes(), encoded.lengths.tobytes()))
            seq += 1
            pending.append(_Pending(row_prefixes(chunk), encoded.empty))
            model.poll()
            while len(pending) >= IN_FLIGHT_CHUNKS:
                rows += _write(out, pending.popleft(), labels, model.answer())
                tracker.update(rows, lines.bytes)
        model.send(None)
        model.wait_ready()  # a file of no rows still needs a usable model
        while pending:
            rows += _write(out, pending.popleft(), labels, model.answer())
            tracker.update(rows, lines.bytes)
        tracker.update(rows, lines.bytes, final=True)
    return rows


def _write(out: TextIO, chunk: _Pending, labels: list[str], answer: tuple[array[int], array[float]]) -> int:
    """A chunk's rows in input order, each followed by label, empty flag and probabilities.

    The bytes ``csv.writer`` gives for the whole row: a float field is ``str(float)`` and never
    needs quotes, and ``true``/``false`` neither.
    """
    label_of, probabilities = answer
    width = len(labels)
    # float32 -> float -> text, exactly as numpy's tolist() and the csv module give them.
    texts = iter(map(repr, probabilities.tolist()))
    per_row = zip(*[texts] * width, strict=True)
    out.write(
        "".join(
            [
                f"{prefix},{labels[label]},{'true' if empty else 'false'},{','.join(probs)}\n"
                for prefix, label, empty, probs in zip(chunk.prefixes, label_of, chunk.empty, per_row, strict=True)
            ]
        )
    )
    return len(chunk.prefixes)
