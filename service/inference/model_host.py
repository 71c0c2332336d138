"""The forward pass in a child process, so it never waits for the event loop's GIL.

In one process the model thread and the event loop share the GIL. A 256-headline request
costs the loop ~1.5 ms of Python (parsing, rendering 43 KB of JSON, the HTTP exchange), and
that work lands right after a batch finishes, exactly when the model thread starts the next
one with its own Python (tokenising, padding, packing), so the model thread waited for the
GIL and 256-headline requests ran well below the in-process rate (docs/decisions: the model
process). Here the model thread only sends texts down a socket and blocks (GIL
released) until the probabilities come back; the child has a GIL of its own.

One child per server (:class:`ModelHost`) holds every loaded version under a key, so a
reload loads into the running child (tens of milliseconds, between batches) instead of
starting a new interpreter. The parent still loads and verifies each artifact too: metadata
for ``GET /model``, the encoder for warm-up inputs, an early ``error:`` line for a broken
folder, and keeps the verified bytes of every version it serves: the child loads from those
bytes, never from the folder, so a version whose folder has since gone can still be restored.

A child that dies, or stays silent past the watchdog's budget while it owes an answer (stopped,
deadlocked, swapping), is killed; the batches it held fail with :class:`ModelProcessLost` (HTTP
503), and a new child is started at once on a thread of its own, off the request path, with
every version still served. Until it is ready, batches fail fast and readiness says 503.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

from contract.artifact import MANIFEST, ArtifactError, load_artifact, resolve_version
from contract.drift import count_encoded
from service.inference.predictor import Prediction, Predictor, resolve_device

log = logging.getLogger("service")

_START_TIMEOUT_S = 300.0  # importing torch on a cold, busy machine
_STOP_TIMEOUT_S = 10.0
# The watchdog: a child that owes an answer and has said nothing for longer than this many
# times the slowest answer seen so far (and at least the server's --model-stall-s) is stuck.
STALL_FACTOR = 10.0
_LOAD_TIMEOUT_S = 120.0  # a load reads and checks a whole artifact: never judged by batch times
_RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
_WARM_TEXTS = ("a first batch for a new model process", "so its device is ready")

# The files of one verified version: relative path -> bytes.
ArtifactFiles = dict[str, bytes]


def read_artifact_files(folder: str | os.PathLike[str]) -> ArtifactFiles:
    """Every file the manifest lists, and the manifest, each checked against its checksum."""
    root = Path(folder)
    try:
        manifest_bytes = (root / MANIFEST).read_bytes()
        listed: dict[str, str] = json.loads(manifest_bytes)["files"]
        files = {MANIFEST: manifest_bytes}
        for name, expected in listed.items():
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise ArtifactError(f"{root / MANIFEST}: lists {name[:80]!r}, outside the version folder; refused")
            data = (root / name).read_bytes()
            if hashlib.sha256(data).hexdigest() != expected:
                raise ArtifactError(f"{root / name}: checksum mismatch (file changed since the artifact was written)")
            files[name] = data
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArtifactError(f"{root}: cannot read the artifact's files ({exc})") from None
    return files


def _load_from_files(name: str, files: ArtifactFiles, device: torch.device) -> Predictor:
    """In the child: the artifact rebuilt in a private temporary folder, loaded (and verified
    again), then deleted. The folder keeps the version's name, which the manifest checks."""
    with tempfile.TemporaryDirectory(prefix="hc-model-") as scratch:
        folder = Path(scratch) / name
        for relative, data in files.items():
            target = folder / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return Predictor(load_artifact(folder, device=device), device)


class ModelProcessLost(RuntimeError):
    """The model process exited (killed, out of memory) while or before computing a batch."""


def _handle(models: dict[int, Predictor], message: tuple[Any, ...]) -> tuple[Any, ...]:
    """One request to the child: ``load``, ``predict`` or ``drop``; the reply to send back."""
    kind, key = message[0], message[1]
    if kind == "predict":
        texts, observe = message[2], message[3]
        predictor = models[key]
        encoded = [predictor.encoder.encode(t) for t in texts]
        sequences = [ids for ids, _ in encoded]
        empty = [e for _, e in encoded]
        result = predictor.predict_encoded(sequences, empty, observe=False)
        return ("ok", result.probabilities, empty, count_encoded(sequences, empty) if observe else None)
    if kind == "load":
        name, files, device = message[2], message[3], torch.device(message[4])
        models[key] = _load_from_files(name, files, device)
        return ("ok", str(models[key].device))
    models.pop(key, None)  # "drop"
    return ("ok",)


def _serve(conn: Connection, threads: int) -> None:
    """The child: answer ``(ticket, kind, key, ...)`` requests, in order, until the parent closes the
    socket or sends ``None``. Each reply starts with its request's ticket."""
    # Ctrl-C reaches the whole process group, and systemd's default stop sends SIGTERM to every
    # process of the service at once: the parent decides when this process ends (after it has
    # drained its requests), by closing the socket or, failing that, with SIGKILL.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(threads)
    models: dict[int, Predictor] = {}
    conn.send((0, "ready"))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if message is None:
            return
        try:
            reply = (message[0], *_handle(models, message[1:]))
        except Exception as exc:  # noqa: BLE001 - one failed request; the process keeps serving
            reply = (message[0], "error", f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except OSError:  # the parent died while this request ran
            return


class _Child:
    """One started ``python -m service.inference.model_host`` and the parent's end of its socket."""

    def __init__(self, threads: int) -> None:
        # A plain subprocess, not multiprocessing: no fork of a threaded process, and no
        # resource-tracker process beside the model process.
        self.warm = False  # it has computed a batch: the watchdog's budget applies from then on
        ours, theirs = socket.socketpair()
        with ours, theirs:
            command = [sys.executable, "-m", "service.inference.model_host", str(theirs.fileno()), str(threads)]
            self.process = subprocess.Popen(command, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
            self.conn = Connection(ours.detach())
        if not self.conn.poll(_START_TIMEOUT_S) or self.request_or_none() != (0, "ready"):
            self.stop()
            raise ArtifactError(f"the model process did not start (exit code {self.exit_code()})")

    @property
    def pid(self) -> int:
        return self.process.pid

    def request_or_none(self, message: tuple[Any, ...] | None = None) -> tuple[Any, ...] | None:
        """Send ``message`` (if any) and return the next reply; None when the child is gone."""
        try:
            if message is not None:
                self.conn.send(message)
            reply: tuple[Any, ...] = self.conn.recv()
            return reply
        except (EOFError, OSError):
            return None

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


# A request sent and not yet answered: its ticket and the generation of the child it went to.
Sent = tuple[int, int]
# Largest request sent ahead from the event loop: a bigger one could fill the socket buffer and
# block the loop until the model process reads it.
SEND_AHEAD_MAX_BYTES = 64 * 1024


class ModelHost:
    """The server's model process: every loaded version under a key.

    Requests carry tickets and the child answers them in order, so one may be sent while an
    earlier one is still computing (the batcher sends a full batch ahead, see
    :meth:`ProcessPredictor.send_ahead`) and each answer is claimed by its own ticket.
    Thread-safe: one lock for sending, one for receiving. Started on the first load; after a
    loss (an exit, or the watchdog), every request in flight fails and a restarter thread
    starts a new child with the versions still registered, from their bytes.
    """

    def __init__(self, threads: int | None = None, stall_s: float = 2.0) -> None:
        # The child's intra-op pool is the size configure_torch_threads gave this process.
        self.threads = threads or torch.get_num_threads()
        self.stall_s = stall_s  # the watchdog's floor
        self.on_loss: Callable[[str], None] | None = None  # called with "exited" or "stalled"
        self._slowest = 0.0  # the longest a reply to a batch has taken
        self._restarting = False
        self._restarter: threading.Thread | None = None
        self._send_lock = threading.Lock()
        self._receive_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._child: _Child | None = None
        self._generation = 0  # bumped when a child is lost: its tickets can never be answered
        self._answers: dict[int, tuple[Any, ...]] = {}  # received, not yet claimed
        self._models: dict[int, tuple[str, ArtifactFiles, str]] = {}  # key -> (name, files, device)
        self._keys = itertools.count(1)
        self._tickets = itertools.count(1)
        self._closed = False
        self._box: list[_Child] = []  # the running child, for the finalizer below
        weakref.finalize(self, _stop_all, self._box)

    @property
    def pid(self) -> int | None:
        """The model process's pid (None before the first load and between a loss and the next request)."""
        child = self._child
        return child.pid if child is not None else None

    @property
    def restarting(self) -> bool:
        """A lost child is being replaced: batches fail fast until the new one serves."""
        return self._restarting

    def _start(self) -> _Child:
        """A new child with every registered version loaded and run once, so its first live batch
        is not its slowest (called with the send lock held)."""
        child = _Child(self.threads)
        for key, (name, files, device) in list(self._models.items()):
            reply = child.request_or_none((0, "load", key, name, files, device))
            if reply is not None and reply[1] == "ok":
                reply = child.request_or_none((0, "predict", key, list(_WARM_TEXTS), False))
            if reply is None or reply[1] != "ok":
                child.stop()
                raise ModelProcessLost(f"the new model process could not load {name}: {reply and reply[2]}")
            child.warm = True
        with self._state_lock:
            self._child = child
            self._box[:] = [child]
        return child

    def _lose(self, child: _Child, reason: str) -> ModelProcessLost:
        """Forget a child that died or was stopped by the watchdog; every ticket it held fails,
        and a new child is started off the request path."""
        with self._state_lock:
            current = self._child is child
            if current:
                self._child = None
                self._generation += 1
                self._answers.clear()
                self._box.clear()
                self._restarting = bool(self._models) and not self._closed
        if reason == "stalled":
            child.process.kill()
        child.stop()
        if current:
            if self.on_loss is not None:
                self.on_loss(reason)
            if self._restarting:
                self._restarter = threading.Thread(target=self._restart, name="model-process-restart", daemon=True)
                self._restarter.start()
        if reason == "stalled":
            return ModelProcessLost("the model process stopped answering; it was stopped and is being replaced")
        return ModelProcessLost(f"the model process exited (exit code {child.exit_code()}); it is being replaced")

    def _restart(self) -> None:
        """The restarter thread: a new child with every served version, retried until it works."""
        log.warning("starting the model process again")
        attempt = 0
        while True:
            with self._send_lock:
                if self._closed:
                    self._restarting = False
                    return
                try:
                    if self._child is None:
                        self._start()
                    self._restarting = False
                    log.info("model process started again (pid %d)", self.pid or -1)
                    return
                except (ArtifactError, ModelProcessLost, OSError) as exc:
                    log.error("model process restart failed: %s", exc)
            time.sleep(_RESTART_BACKOFF_S[min(attempt, len(_RESTART_BACKOFF_S) - 1)])
            attempt += 1

    def wait_until_serving(self, timeout: float) -> bool:
        """For tests and benchmarks: True once no restart is under way."""
        deadline = time.monotonic() + timeout
        while self._restarting and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._restarting

    def _budget(self) -> float:
        return max(self.stall_s, STALL_FACTOR * self._slowest)

    def send(
        self, message: tuple[Any, ...], *, start: bool = True, wait: bool = True, max_bytes: int | None = None
    ) -> Sent | None:
        """Send one request; its ticket. None when it was not sent: no child runs and ``start`` is
        False; another thread is sending or starting a child and ``wait`` is False (the event
        loop never waits); or the request is larger than ``max_bytes``."""
        if self._restarting:
            if not wait:
                return None
            raise ModelProcessLost("the model process is being replaced; retry shortly")
        if not self._send_lock.acquire(blocking=wait):
            return None
        try:
            if self._closed:
                raise ModelProcessLost("the model process was stopped (the server is shutting down)")
            child = self._child
            if child is None:
                if not start:
                    return None
                child = self._start()
            ticket = next(self._tickets)
            data = pickle.dumps((ticket, *message), protocol=pickle.HIGHEST_PROTOCOL)
            if max_bytes is not None and len(data) > max_bytes:
                return None
            try:
                child.conn.send_bytes(data)
            except OSError:
                raise self._lose(child, "exited") from None
            return ticket, self._generation
        finally:
            self._send_lock.release()

    def receive(self, sent: Sent, budget_s: float | None = None) -> tuple[Any, ...]:
        """The answer to a sent request: ``("ok", ...)`` or ``("error", message)``.

        The watchdog: a child silent for longer than ``budget_s`` (default: STALL_FACTOR times
        the slowest answer seen, at least ``stall_s``) while it owes this answer is stopped.
        """
        ticket, generation = sent
        with self._receive_lock:
            while True:
                answer = self._answers.pop(ticket, None)
                if answer is not None:
                    return answer
                child = self._child
                if generation != self._generation or child is None:
                    raise ModelProcessLost("the model process exited before it answered; it is being replaced")
                if budget_s is not None:
                    budget = budget_s
                else:  # a child's first batch may set up a device (CUDA): never judged by later ones
                    budget = self._budget() if child.warm else _LOAD_TIMEOUT_S
                started = time.monotonic()
                try:
                    if not child.conn.poll(budget):
                        log.error("the model process said nothing for %.1f s while computing; replacing it", budget)
                        raise self._lose(child, "stalled")
                    reply = child.conn.recv()
                except (EOFError, OSError):
                    raise self._lose(child, "exited") from None
                if budget_s is None:
                    if child.warm:
                        self._slowest = max(self._slowest, time.monotonic() - started)
                    child.warm = True
                self._answers[reply[0]] = reply[1:]

    def load(self, folder: str, device: str) -> tuple[int, str]:
        """Load ``folder`` in the child from its verified bytes, which the host keeps to restore
        the version after a loss; its key and the device it landed on. Raises ArtifactError."""
        key = next(self._keys)
        name, files = Path(folder).name, read_artifact_files(folder)
        try:
            reply = self.receive(self._send_or_raise(("load", key, name, files, device)), budget_s=_LOAD_TIMEOUT_S)
        except ModelProcessLost as exc:
            raise ArtifactError(str(exc)) from None
        if reply[0] != "ok":
            raise ArtifactError(f"the model process could not load {folder}: {reply[1]}")
        self._models[key] = (name, files, device)
        return key, str(reply[1])

    def _send_or_raise(self, message: tuple[Any, ...]) -> Sent:
        sent = self.send(message)
        assert sent is not None  # start=True, no size limit
        return sent

    def serves(self, key: int) -> bool:
        return key in self._models

    def predict(self, key: int, texts: list[str], observe: bool) -> tuple[Any, ...]:
        """``("ok", probabilities, empty, counts or None)``, or ``("error", message)``."""
        if key not in self._models:
            raise ModelProcessLost("this model version is no longer loaded")
        return self.receive(self._send_or_raise(("predict", key, texts, observe)))

    def drop(self, key: int) -> None:
        """Forget a version (idempotent); the child frees it."""
        if self._models.pop(key, None) is not None and self._child is not None and not self._closed:
            try:
                sent = self.send(("drop", key), start=False)
                if sent is not None:
                    self.receive(sent)
            except ModelProcessLost:  # nothing left to free
                pass

    def close(self) -> None:
        """Stop the model process for good (idempotent)."""
        self._closed = True  # a restart under way gives up at its next step
        with self._send_lock:
            self._restarting = False
            with self._state_lock:
                child, self._child = self._child, None
                self._generation += 1
                self._box.clear()
        if child is not None:
            child.stop()

    def __enter__(self) -> ModelHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stop_all(box: list[_Child]) -> None:
    """Finalizer of a ModelHost that was never closed."""
    for child in box:
        child.stop()


def _drop_quietly(host: ModelHost, key: int) -> None:
    """Finalizer of a ProcessPredictor: never raises (it may run at interpreter exit)."""
    try:
        host.drop(key)
    except Exception:  # noqa: BLE001 - a lost child has nothing left to free
        pass


class ProcessPredictor(Predictor):
    """A :class:`Predictor` whose batches run in the model process; everything else is local.

    On the CPU a batch of one text still runs here, on the calling thread: the hop to the
    child and back (two wake-ups of an idle CPU) added ~0.14 ms to a lone request, about a
    seventh of its latency, and a single text is too little work for the GIL to matter. The
    parent's copy of the model is the same artifact on the same device, so both paths agree.
    """

    def __init__(self, folder: str | os.PathLike[str], device: torch.device, host: ModelHost) -> None:
        # The parent's copy stays on the CPU: metadata, warm-up inputs and lone CPU texts.
        super().__init__(load_artifact(folder, device=torch.device("cpu")), torch.device("cpu"))
        self.host = host
        self._key, served_on = host.load(os.fspath(folder), str(device))
        self.device = torch.device(served_on)
        self._release = weakref.finalize(self, _drop_quietly, host, self._key)

    @classmethod
    def start(
        cls, host: ModelHost, artifacts_dir: str | os.PathLike[str], version: str = "latest", device: str = "auto"
    ) -> ProcessPredictor:
        """Resolve and verify ``version`` and load it into ``host``'s model process; raises ArtifactError."""
        return cls(resolve_version(artifacts_dir, version), resolve_device(device), host)

    @property
    def pid(self) -> int | None:
        return self.host.pid

    def predict(self, texts: Sequence[str], *, observe: bool = True) -> Prediction:
        if not self._release.alive:
            raise ModelProcessLost("this model version is no longer served")
        if len(texts) <= 1 and self.device.type == "cpu":
            return super().predict(texts, observe=observe)
        return self._answer(self.host.predict(self._key, list(texts), observe))

    def send_ahead(self, texts: Sequence[str]) -> Callable[[], Prediction] | None:
        """Send a batch now, behind the one computing, so the model process never waits for this
        process between them; the returned call waits for its answer. Called on the event loop:
        it never starts a model process and never sends more than SEND_AHEAD_MAX_BYTES."""
        if not self._release.alive or (len(texts) <= 1 and self.device.type == "cpu"):
            return None
        if not self.host.serves(self._key):
            return None
        sent = self.host.send(
            ("predict", self._key, list(texts), True), start=False, wait=False, max_bytes=SEND_AHEAD_MAX_BYTES
        )
        if sent is None:
            return None
        return functools.partial(self._collect, sent)

    def _collect(self, sent: Sent) -> Prediction:
        return self._answer(self.host.receive(sent))

    def _answer(self, reply: tuple[Any, ...]) -> Prediction:
        if reply[0] != "ok":
            raise RuntimeError(reply[1])
        _, probabilities, empty, counts = reply
        if counts is not None and self.observer is not None:
            self.observer(counts, probabilities, self.classes)
        return Prediction(probabilities, empty, self.version, self.classes)

    def close(self) -> None:
        """Unload this version from the model process (idempotent; also runs when garbage-collected)."""
        self._release()


def load_predictor(
    artifacts_dir: str | os.PathLike[str], version: str, device: str, host: ModelHost | None
) -> Predictor:
    """The served predictor: loaded into ``host``'s model process, or (``host`` None) wholly in this one."""
    if host is not None:
        return ProcessPredictor.start(host, artifacts_dir, version, device)
    return Predictor.load(artifacts_dir, version, device)


def main(argv: Sequence[str]) -> int:
    """``python -m service.inference.model_host FD THREADS``: started by :class:`ModelHost` only."""
    fd, threads = argv
    _serve(Connection(int(fd)), int(threads))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
