"""The model half of local scoring: its own process, so torch loads while the reader tokenises.

The reader (``scoring.local_engine``) sends chunks as token-table rows; this process keeps one
vector per distinct token, cuts each chunk into the same same-length batches as the in-process
engine (``scoring.score.score_file``), runs them on ``workers`` threads of one torch thread each
and sends back each chunk's labels and probabilities, in chunk order. Messages are tuples:

    reader -> model:  (seq, reset, new_tokens, flat, lengths)   ... then None: no more chunks
    model -> reader:  (READY, version, time.time()) or (ERROR, reason), once, after loading
                      (RESULT, seq, labels, probabilities) per chunk, or (FAILED, traceback)
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from scoring.score import same_length_batches

if TYPE_CHECKING:
    import numpy as np
    import torch

    from contract.model import TextClassifier
    from service.inference.predictor import Predictor

READY, ERROR, RESULT, FAILED = "ready", "error", "result", "failed"


def main(argv: Sequence[str]) -> None:
    """Arguments ``FD FOLDER DEVICE WORKERS BATCH_SIZE``: the reader starts this process with them."""
    fd, folder, device, workers, batch_size = argv
    # Ctrl-C reaches the whole process group: the reader handles it and stops this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with Connection(int(fd)) as conn:
        serve(conn, folder, device, int(workers), int(batch_size))
    # Everything is answered and this process writes no file: skip the interpreter's teardown,
    # which with torch loaded costs a large part of a second the reader would wait for.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def serve(conn: Connection, folder: str, device: str, workers: int, batch_size: int) -> None:
    """Process target: load the model, then score chunks until the reader sends None."""
    try:
        import torch

        from contract.artifact import ArtifactError, load_artifact
        from service.inference.predictor import Predictor, resolve_device

        torch.set_num_threads(1)  # parallel batches on separate CPUs, not one batch split across them
        try:
            dev = resolve_device(device)
            predictor = Predictor(load_artifact(folder, device=dev), dev)
        except ArtifactError as exc:
            conn.send((ERROR, str(exc)))
            return
        predictor.max_group = max(predictor.max_group, batch_size)
        scorer = ChunkScorer(predictor, batch_size)
        conn.send((READY, predictor.version, time.time()))
        scorer.run(conn, workers)
    except (EOFError, BrokenPipeError):  # the reader is gone (bad input, Ctrl-C): nothing to answer
        return
    except BaseException:
        conn.send((FAILED, traceback.format_exc()))


def one_torch_thread() -> None:
    """Thread initializer for the workers: torch's thread settings are per thread, and a thread
    whose first op is a matrix product (no embedding ran in it first) would otherwise run it with
    the library's default thread count: other bits, and more threads than CPUs."""
    import torch

    torch.set_num_threads(1)


class _TableLookup:
    """The model, with ``embed`` answered from the token table; every other part is the model's own.

    ``TextClassifier.forward`` runs on this object, so the recurrence, pooling, head and any later
    change to them are the model's code: only the per-token embedding step is looked up.
    """

    def __init__(self, model: TextClassifier, vectors: torch.Tensor) -> None:
        self._model = model
        self._vectors = vectors

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self._vectors[ids[..., 0]]


class ChunkScorer:
    """The token table (features and vectors per row) and the forward passes over it."""

    def __init__(self, predictor: Predictor, batch_size: int) -> None:
        self.predictor = predictor
        self.batch_size = batch_size
        # A wide or linear head reads the features themselves, not vectors: such a model takes
        # the in-process engine's path, with features rebuilt from the table.
        self.by_vectors = not predictor.model.reads_features
        self.features: list[Any] = []
        self.vectors: torch.Tensor | None = None
        self._start_table()

    def _start_table(self) -> None:
        features, _ = self.predictor.encoder.encode("")  # EMPTY_ROW: a text with no tokens
        self.features = list(features)
        self.vectors = self._embed(self.features) if self.by_vectors else None

    def _embed(self, features: Sequence[Any]) -> torch.Tensor:
        import torch

        from contract.model import pad_batch

        ids, _ = pad_batch([features], self.predictor.device)
        if ids.dim() == 3 and ids.shape[-1] == 1:
            # Words without a single n-gram (the empty text's lone <UNK>): one padding column,
            # which adds nothing, as inside a batch whose other rows have n-grams.
            ids = torch.nn.functional.pad(ids, (0, 1))
        with torch.inference_mode():
            return self.predictor.model.embed(ids)[0]

    def add_tokens(self, tokens: list[str], reset: bool) -> None:
        """Append the rows of ``tokens`` (in the order the reader numbered them); ``reset``: start over first."""
        import torch

        if reset:
            self._start_table()
        if not tokens:
            return
        # Tokens are the normaliser's output, which it maps back to themselves, so encoding them
        # joined gives each token's own features, exactly as inside its headline.
        features, empty = self.predictor.encoder.encode(" ".join(tokens))
        if empty or len(features) != len(tokens):
            raise RuntimeError(f"the artifact's encoder gave {len(features)} features for {len(tokens)} of its tokens")
        self.features.extend(features)
        if self.vectors is not None:
            self.vectors = torch.cat([self.vectors, self._embed(features)])

    def submit(
        self, pool: ThreadPoolExecutor, flat: np.ndarray, lengths: np.ndarray
    ) -> tuple[np.ndarray, list[Future[None]]]:
        """Queue a chunk's same-length batches on ``pool``; its probabilities fill in as they finish."""
        import numpy as np

        offsets = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=offsets[1:])
        order = np.argsort(lengths, kind="stable").tolist()  # the in-process engine's sorted(), same ties
        probabilities = np.empty((len(lengths), len(self.predictor.classes)), dtype=np.float32)
        # This chunk's table: a later chunk may start a new one while these batches still run
        # (rows are only ever appended to a table, so the rows a batch reads never change).
        features, vectors = self.features, self.vectors
        futures = []
        for rows in same_length_batches(order, lengths.tolist(), self.batch_size):
            picked = np.asarray(rows, dtype=np.int64)
            ids = flat[offsets[picked][:, None] + np.arange(int(lengths[rows[0]]))].astype(np.int64)
            futures.append(pool.submit(self._forward, probabilities, picked, ids, features, vectors))
        return probabilities, futures

    def _forward(
        self, out: np.ndarray, rows: np.ndarray, ids: np.ndarray, features: list[Any], vectors: torch.Tensor | None
    ) -> None:
        import torch

        from contract.model import TextClassifier, probabilities

        predictor = self.predictor
        if vectors is None:
            sequences = [[features[i] for i in row] for row in ids.tolist()]
            out[rows] = predictor.predict_encoded(sequences, [False] * len(rows), observe=False).probabilities
            return
        tokens = torch.from_numpy(ids).to(predictor.device).unsqueeze(-1)
        lengths = torch.full((len(rows),), ids.shape[1], dtype=torch.int64)
        with torch.inference_mode():
            # Rows of one length, no padding: the plain recurrence, as the in-process engine runs them.
            logits = TextClassifier.forward(_TableLookup(predictor.model, vectors), tokens, lengths, pack=False)  # type: ignore[arg-type]
            out[rows] = probabilities(logits, predictor.artifact.temperature).cpu().numpy()

    def run(self, conn: Connection, workers: int) -> None:
        """Score chunks from ``conn`` until None; a sender thread answers each chunk in order."""
        import numpy as np

        answers: queue.Queue[tuple[int, np.ndarray, list[Future[None]]] | None] = queue.Queue()
        sender = threading.Thread(target=_send_answers, args=(conn, answers), name="score-answers", daemon=True)
        sender.start()
        with ThreadPoolExecutor(workers, "score-model", initializer=one_torch_thread) as pool:
            try:
                while (message := conn.recv()) is not None:
                    seq, reset, tokens, flat, lengths = message
                    self.add_tokens(tokens, reset)
                    probs, futures = self.submit(
                        pool, np.frombuffer(flat, dtype=np.int32), np.frombuffer(lengths, dtype=np.int32)
                    )
                    answers.put((seq, probs, futures))
            finally:
                answers.put(None)
                sender.join()


def _send_answers(conn: Connection, answers: queue.Queue[Any]) -> None:
    while (item := answers.get()) is not None:
        seq, probabilities, futures = item
        try:
            for future in futures:
                future.result()
            labels = probabilities.argmax(axis=1).astype("int32")
            conn.send((RESULT, seq, labels.tobytes(), probabilities.tobytes()))
        except (EOFError, BrokenPipeError, OSError):
            return
        except BaseException:
            conn.send((FAILED, traceback.format_exc()))
            return
