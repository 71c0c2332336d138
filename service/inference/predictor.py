"""Wraps one loaded artifact: raw texts in, class probabilities out.

Uses the artifact's own TextEncoder (preprocessing + vocabulary), so serving reproduces
training-time preprocessing exactly. Not thread-safe by design: the batcher calls it from a
single worker thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from contract.artifact import Artifact, ArtifactError, load_artifact, resolve_version
from contract.drift import InputCounts, count_encoded
from contract.model import pad_batch, probabilities

# Length groups inside a batch. The packed recurrence already runs every row only for its own
# length, so a batch is split only around outliers: padding a row to more than this factor
# of its length (plus slack) costs more in the embedding and max-pooling than one more
# forward pass does. Every extra group is a full Python trip through the model, so grouping
# typical headlines (3-20 tokens) more finely made small batches markedly slower.
_GROUP_PAD_FACTOR = 4.0
_GROUP_PAD_SLACK = 8


@dataclass(frozen=True)
class Prediction:
    """Probabilities ``[N, C]`` (float32, rows in input order) and the empty flag per text."""

    probabilities: np.ndarray
    empty: list[bool]
    version: str
    classes: list[str]


# Called once per predict() with the batch's input counts, probabilities and class names
# (the drift counters on /metrics); runs in the model thread, so it must stay cheap.
PredictionObserver = Callable[[InputCounts, np.ndarray, list[str]], None]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ArtifactError("device 'cuda' requested but CUDA is not available")
    return torch.device(device)


def length_groups(lengths: Sequence[int], max_group: int) -> list[list[int]]:
    """Row indices grouped by similar length (sorted ascending), each group at most ``max_group`` rows."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (
            len(current) >= max_group or lengths[i] > lengths[current[0]] * _GROUP_PAD_FACTOR + _GROUP_PAD_SLACK
        ):
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


class Predictor:
    """A verified artifact on a device, ready to classify raw texts."""

    def __init__(self, artifact: Artifact, device: torch.device, max_group: int = 256) -> None:
        self.artifact = artifact
        self.device = device
        self.max_group = max_group
        self.model = artifact.model.to(device).eval()
        self.encoder = artifact.text_encoder()
        self.classes: list[str] = list(artifact.labels.classes)
        self.version = artifact.version
        self.observer: PredictionObserver | None = None

    @property
    def computes_lone_text_here(self) -> bool:
        """A single text is computed in this process, on the CPU: cheap enough to run on the
        event loop when the model is otherwise idle (see service/inference/batching.py)."""
        return self.device.type == "cpu"

    @classmethod
    def load(cls, artifacts_dir: str | os.PathLike[str], version: str = "latest", device: str = "auto") -> Predictor:
        """Resolve ``version`` in ``artifacts_dir``, verify and load it; raises ArtifactError."""
        dev = resolve_device(device)
        folder = resolve_version(artifacts_dir, version)
        return cls(load_artifact(folder, device=dev), dev)

    def predict(self, texts: Sequence[str], *, observe: bool = True) -> Prediction:
        """Probabilities for every text, in input order (``observe``: report to :attr:`observer`)."""
        encoded = [self.encoder.encode(t) for t in texts]
        return self.predict_encoded([ids for ids, _ in encoded], [empty for _, empty in encoded], observe=observe)

    def predict_encoded(
        self, sequences: Sequence[Sequence[Any]], empty: Sequence[bool], *, observe: bool = True
    ) -> Prediction:
        """:meth:`predict` for texts already encoded by ``self.encoder`` (offline scoring sorts by length first)."""
        out = np.empty((len(sequences), len(self.classes)), dtype=np.float32)
        if sequences:
            lengths = [len(s) for s in sequences]
            with torch.inference_mode():
                for group in length_groups(lengths, self.max_group):
                    out[group] = self._forward([sequences[i] for i in group], lengths[group[0]] == lengths[group[-1]])
        if observe and self.observer is not None:
            self.observer(count_encoded(sequences, empty), out, self.classes)
        return Prediction(out, list(empty), self.version, self.classes)

    def _forward(self, sequences: list[Sequence[Any]], same_length: bool) -> np.ndarray:
        ids, lengths = pad_batch(sequences, self.device)
        # With no padding in the group the plain (unpacked) recurrence gives the same result
        # and skips packing overhead: the common case for single short requests.
        logits = self.model(ids, lengths, pack=not same_length)
        # The artifact's fitted temperature (1.0 for uncalibrated models): served
        # probabilities are the calibrated ones that metrics.json describes.
        return probabilities(logits, self.artifact.temperature).cpu().numpy()

    def close(self) -> None:
        """Release what outlives garbage collection: nothing here (a model process in a subclass)."""

    def send_ahead(self, texts: Sequence[str]) -> Callable[[], Prediction] | None:
        """Start computing ``texts`` behind the running batch; None when it cannot be (here: never,
        the model thread computes one batch at a time; a model process can, see service/inference/model_host.py)."""
        return None

    def warmup_batches(self, rounds: int = 2) -> list[list[str]]:
        """Warm-up inputs: several batch sizes and lengths (allocator, kernels, caches), one pass each."""
        word = next((w for w in self.artifact.vocab.itos[2:] if w not in self.encoder.normalizer._stopwords), "x")
        return [
            [" ".join([word] * length)] * batch
            for _ in range(rounds)
            for length in (1, 4, 12, 32)
            for batch in (1, 8, 64)
        ]

    def describe(self) -> dict[str, Any]:
        """Metadata for GET /model."""
        # Here, not at the top: offline scoring loads a Predictor and never pays for prometheus_client.
        from service.observability.drift import read_reference

        art = self.artifact
        pre = art.preprocessing
        reference, note = read_reference(art.metrics)
        return {
            "version": self.version,
            "created_at": art.manifest.get("created_at"),
            "categories": self.classes,
            "metrics": {k: v for k, v in art.metrics.items() if k != "reference"},
            "reference": reference,
            "reference_note": note,
            "model_config": art.config.to_dict(),
            "preprocessing": {
                "lowercase": pre.lowercase,
                "remove_stopwords": pre.remove_stopwords,
                "stopword_count": len(pre.stopwords),
                "vocab_size": len(art.vocab),
            },
            "device": str(self.device),
        }
