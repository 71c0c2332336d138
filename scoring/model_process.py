"""The model half of local scoring: its own process, so torch loads while the reader tokenises.

The reader (``scoring.local_engine``) sends chunks as token-table rows; this process keeps the
model input ids of each distinct token, cuts each chunk into the same same-length batches as the in-process
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


class ChunkScorer:
    """The token table (each distinct token's features, as model input ids) and the forward
    passes over it.

    A batch's input is one lookup of its tokens' rows, ``[B, T, 1 + K]`` (or ``[B, T]`` for a
    model without n-grams), then the model's own forward pass: the same input the in-process
    engine builds with ``pad_batch``, so the same computation, bit for bit, whatever the model
    reads (the fused recurrence looks known words up in its own table; unknown words bring
    their n-grams; a wide or linear head reads the features themselves).
    """

    def __init__(self, predictor: Predictor, batch_size: int) -> None:
        self.predictor = predictor
        self.batch_size = batch_size
        self.features: torch.Tensor | None = None  # row i: token i's ids
        self._start_table()

    def _start_table(self) -> None:
        features, _ = self.predictor.encoder.encode("")  # EMPTY_ROW: a text with no tokens
        self.features = None
        self._append(list(features))

    def _append(self, features: list[Any]) -> None:
        import torch

        from contract.model import pad_batch

        rows, _ = pad_batch([features])
        rows = rows[0]  # [n] or [n, 1 + k]
        table = self.features
        if table is not None and rows.dim() == 2 and rows.shape[1] != table.shape[1]:
            # n-gram columns padded with 0 (none) to the wider of the two.
            width = max(rows.shape[1], table.shape[1])
            rows = torch.nn.functional.pad(rows, (0, width - rows.shape[1]))
            table = torch.nn.functional.pad(table, (0, width - table.shape[1]))
        self.features = rows if table is None else torch.cat([table, rows])

    def add_tokens(self, tokens: list[str], reset: bool) -> None:
        """Append the rows of ``tokens`` (in the order the reader numbered them); ``reset``: start over first."""
        if reset:
            self._start_table()
        if not tokens:
            return
        # Tokens are the normaliser's output, which it maps back to themselves, so encoding them
        # joined gives each token's own features, exactly as inside its headline.
        features, empty = self.predictor.encoder.encode(" ".join(tokens))
        if empty or len(features) != len(tokens):
            raise RuntimeError(f"the artifact's encoder gave {len(features)} features for {len(tokens)} of its tokens")
        self._append(list(features))

    def submit(
        self, pool: ThreadPoolExecutor, flat: np.ndarray, lengths: np.ndarray
    ) -> tuple[np.ndarray, list[Future[None]]]:
        """Queue a chunk's same-length batches on ``pool``; its probabilities fill in as they finish."""
        import numpy as np

        offsets = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=offsets[1:])
        order = np.argsort(lengths, kind="stable").tolist()  # the in-process engine's sorted(), same ties
        probabilities = np.empty((len(lengths), len(self.predictor.classes)), dtype=np.float32)
        # This chunk's table: a later chunk may start a new one while these batches still run.
        table = self.features
        assert table is not None
        futures = []
        for rows in same_length_batches(order, lengths.tolist(), self.batch_size):
            picked = np.asarray(rows, dtype=np.int64)
            ids = flat[offsets[picked][:, None] + np.arange(int(lengths[rows[0]]))].astype(np.int64)
            futures.append(pool.submit(self._forward, probabilities, picked, ids, table))
        return probabilities, futures

    def _forward(self, out: np.ndarray, rows: np.ndarray, ids: np.ndarray, table: torch.Tensor) -> None:
        import torch

        from contract.model import probabilities

        predictor = self.predictor
        features = table[torch.from_numpy(ids)]
        if features.dim() == 3 and features.shape[-1] > 1:
            # Only as many n-gram columns as this batch's tokens use, as pad_batch would give.
            features = features[..., : 1 + int((features[..., 1:] != 0).sum(-1).max())]
        lengths = torch.full((len(rows),), ids.shape[1], dtype=torch.int64)
        with torch.inference_mode():
            # Rows of one length, no padding: the plain recurrence, as the in-process engine runs them.
            logits = predictor.model(features.to(predictor.device), lengths, pack=False)
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
