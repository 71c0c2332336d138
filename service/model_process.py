"""The forward pass in a child process, so it never waits for the event loop's GIL.

In one process the model thread and the event loop share the GIL. A 256-headline request
costs the loop ~1.5 ms of Python (parsing, rendering 43 KB of JSON, the HTTP exchange), and
that work lands right after a batch finishes, exactly when the model thread starts the next
one with its own Python (tokenising, padding, packing). Measured on 2 CPUs, the model thread
was off its CPU 13% of the time and served 256-headline requests at 0.80 of the in-process
rate. Here the model thread only sends texts down a pipe and blocks (GIL released) until the
probabilities come back; the child has a GIL of its own.

The parent still loads and verifies the artifact (metadata for ``GET /model``, the encoder
for warm-up inputs, an early ``error:`` line for a broken folder); the child loads the same
folder again and is the only process that runs the model. A child that dies fails its batch
with :class:`ModelProcessLost` (HTTP 503) and is started again for the next batch.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import weakref
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import torch

from contract.artifact import ArtifactError, load_artifact, resolve_version
from contract.drift import count_encoded
from service.predictor import Prediction, Predictor, resolve_device

log = logging.getLogger("service")

_START_TIMEOUT_S = 300.0  # importing torch and loading a model on a cold, busy machine
_STOP_TIMEOUT_S = 10.0


class ModelProcessLost(RuntimeError):
    """The model process exited (killed, out of memory) while or before computing a batch."""


def _serve(conn: Connection, folder: str, device: str, threads: int) -> None:
    """The child: load the model, then answer ``(texts, observe)`` messages until EOF or ``None``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides
    torch.set_num_threads(threads)
    try:
        dev = torch.device(device)
        predictor = Predictor(load_artifact(folder, device=dev), dev)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which owns the error message
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", str(predictor.device)))
    encode = predictor.encoder.encode
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if message is None:
            return
        texts, observe = message
        try:
            encoded = [encode(t) for t in texts]
            sequences = [ids for ids, _ in encoded]
            empty = [e for _, e in encoded]
            result = predictor.predict_encoded(sequences, empty, observe=False)
            counts = count_encoded(sequences, empty) if observe else None
            reply: tuple[Any, ...] = ("ok", result.probabilities, empty, counts)
        except Exception as exc:  # noqa: BLE001 - one failed batch, the process keeps serving
            reply = ("error", f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except OSError:  # the parent died while this batch ran
            return


class _Child:
    """One started model process (``python -m service.model_process``) and the parent's end of its socket."""

    def __init__(self, folder: str, device: str, threads: int) -> None:
        # A plain subprocess, not multiprocessing: no fork of a threaded process, and no
        # extra resource-tracker process beside the model process.
        ours, theirs = socket.socketpair()
        with ours, theirs:
            command = [
                sys.executable,
                "-m",
                "service.model_process",
                str(theirs.fileno()),
                folder,
                device,
                str(threads),
            ]
            self.process = subprocess.Popen(command, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
            self.conn = Connection(ours.detach())
        if not self.conn.poll(_START_TIMEOUT_S):
            self.stop()
            raise ArtifactError(f"the model process did not start within {_START_TIMEOUT_S:g} s")
        try:
            status, detail = self.conn.recv()
        except (EOFError, OSError):
            self.stop()
            raise ArtifactError(f"the model process exited while loading (exit code {self.process.poll()})") from None
        if status != "ready":
            self.stop()
            raise ArtifactError(f"the model process could not load {folder}: {detail}")
        self.device: str = detail

    @property
    def pid(self) -> int:
        return self.process.pid

    def exit_code(self) -> int | None:
        """The exit status once the process has ended (waits briefly: it is usually just ending)."""
        try:
            return self.process.wait(1.0)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """Ask the child to exit, then make sure it has (and reap it)."""
        try:
            self.conn.send(None)
        except OSError:
            pass
        try:
            self.process.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.conn.close()


class ProcessPredictor(Predictor):
    """A :class:`Predictor` whose batches run in a child process; everything else is local.

    On the CPU a batch of one text still runs here, on the calling thread: the hop to the
    child and back (two wake-ups of an idle CPU) added ~0.14 ms to a lone request, about a
    seventh of its latency, and a single text is too little work for the GIL to matter. The
    parent's copy of the model is the same artifact on the same device, so both paths agree.
    """

    def __init__(self, folder: str | os.PathLike[str], device: torch.device) -> None:
        # The parent's copy stays on the CPU: metadata, warm-up inputs and lone CPU texts.
        super().__init__(load_artifact(folder, device=torch.device("cpu")), torch.device("cpu"))
        # The child's intra-op pool is the size configure_torch_threads gave this process.
        self._spec = (os.fspath(folder), str(device), torch.get_num_threads())
        self._lock = threading.Lock()
        self._closed = False
        self._child: _Child | None = _Child(*self._spec)
        self.device = torch.device(self._child.device)
        self._finalizer = weakref.finalize(self, _stop_child, self._child)

    @classmethod
    def start(
        cls, artifacts_dir: str | os.PathLike[str], version: str = "latest", device: str = "auto"
    ) -> ProcessPredictor:
        """Resolve and verify ``version``, then start its model process; raises ArtifactError."""
        return cls(resolve_version(artifacts_dir, version), resolve_device(device))

    @property
    def pid(self) -> int | None:
        """The model process's pid (None between a lost child and the next batch)."""
        child = self._child
        return child.pid if child is not None else None

    def predict(self, texts: Sequence[str], *, observe: bool = True) -> Prediction:
        if len(texts) <= 1 and self.device.type == "cpu":
            return super().predict(texts, observe=observe)
        with self._lock:
            if self._closed:
                raise ModelProcessLost("the model process was stopped (this model version is no longer served)")
            if self._child is None:  # lost during an earlier batch
                log.warning("starting the model process again")
                self._child = _Child(*self._spec)
                self._finalizer = weakref.finalize(self, _stop_child, self._child)
            child = self._child
            try:
                child.conn.send((list(texts), observe))
                reply = child.conn.recv()
            except (EOFError, OSError):
                self._child = None
                self._finalizer()
                raise ModelProcessLost(
                    f"the model process exited (exit code {child.exit_code()}); it is restarted for the next batch"
                ) from None
        if reply[0] != "ok":
            raise RuntimeError(reply[1])
        _, probabilities, empty, counts = reply
        if observe and counts is not None and self.observer is not None:
            self.observer(counts, probabilities, self.classes)
        return Prediction(probabilities, empty, self.version, self.classes)

    def close(self) -> None:
        """Stop the model process (idempotent; also runs when the predictor is garbage-collected)."""
        with self._lock:
            self._closed = True
            self._child = None
            self._finalizer()


def _stop_child(child: _Child) -> None:
    child.stop()


def load_predictor(artifacts_dir: str | os.PathLike[str], version: str, device: str, in_child: bool) -> Predictor:
    """The served predictor: with a model process (``in_child``) or wholly in this one; raises ArtifactError."""
    if in_child:
        return ProcessPredictor.start(artifacts_dir, version, device)
    return Predictor.load(artifacts_dir, version, device)


def main(argv: Sequence[str]) -> int:
    """``python -m service.model_process FD FOLDER DEVICE THREADS``: started by :class:`_Child` only."""
    fd, folder, device, threads = argv
    _serve(Connection(int(fd)), folder, device, int(threads))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
