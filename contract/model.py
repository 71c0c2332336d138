"""The model half of the artifact contract: config dataclass and the classifier (forward only).

Embedding → recurrent layer → dense → dropout → dense, as in the RNN lesson, but with
packed sequences so padding never enters the recurrence, and the true final state of both
directions for the bidirectional GRU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from contract.text import PAD_INDEX

RNN_TYPES = ("rnn", "gru", "bigru")
POOLINGS = ("last", "max", "last_max")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network; saved next to the weights.

    The defaults are the architecture training ships (TrainConfig takes its model defaults from
    here), so a test or benchmark that builds ``ModelConfig(vocab, classes)`` gets the real model.
    """

    vocab_size: int
    num_classes: int
    rnn_type: str = "bigru"
    embedding_dim: int = 100
    hidden_dim: int = 64
    fc_dim: int = 64
    dropout: float = 0.5
    embedding_dropout: float = 0.3
    pooling: str = "last_max"

    def __post_init__(self) -> None:
        if self.rnn_type not in RNN_TYPES:
            raise ValueError(f"rnn_type must be one of {RNN_TYPES}, got {self.rnn_type!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.vocab_size < 2 or self.num_classes < 2:
            raise ValueError("vocab_size and num_classes must be at least 2")

    @property
    def bidirectional(self) -> bool:
        return self.rnn_type == "bigru"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**data)


class TextClassifier(nn.Module):
    """Recurrent headline classifier; returns logits, one row per text."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim, padding_idx=PAD_INDEX)
        self.embedding_dropout = nn.Dropout(config.embedding_dropout)
        rnn_cls = nn.RNN if config.rnn_type == "rnn" else nn.GRU
        self.rnn = rnn_cls(
            config.embedding_dim, config.hidden_dim, batch_first=True, bidirectional=config.bidirectional
        )
        directions = 2 if config.bidirectional else 1
        features = config.hidden_dim * directions * (2 if config.pooling == "last_max" else 1)
        self.fc1 = nn.Linear(features, config.fc_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.fc2 = nn.Linear(config.fc_dim, config.num_classes)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor, pack: bool | None = None) -> torch.Tensor:
        """``ids``: [B, T] token indices, ``lengths``: [B] true lengths (≥ 1, on any device).

        ``pack=None`` packs only when rows differ in length: a batch of equal-length rows (the
        common case with length-bucketed batches) has no padding, so the plain recurrence gives
        the same result without the packing overhead. ``pack=False`` forces the plain path and
        is only correct when no row is padded.
        """
        x = self.embedding_dropout(self.embedding(ids))
        if pack is None:
            lengths_cpu = lengths.cpu()
            pack = bool(lengths_cpu.min() != lengths_cpu.max()) or int(lengths_cpu[0]) != ids.shape[1]
        if pack:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out_packed, h_n = self.rnn(packed)
        else:
            out_packed, h_n = None, None
            out, h_n = self.rnn(x)
        # h_n: [directions, B, H]; for packed input the forward state is taken at each row's
        # own last token and the backward state after it has read the whole row.
        last = torch.cat(list(h_n), dim=1)
        if self.config.pooling == "last":
            features = last
        else:
            if out_packed is not None:
                out, _ = pad_packed_sequence(out_packed, batch_first=True, total_length=ids.shape[1])
            mask = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths.to(ids.device)[:, None]
            pooled = out.masked_fill(~mask[:, :, None], float("-inf")).amax(dim=1)
            features = pooled if self.config.pooling == "max" else torch.cat([last, pooled], dim=1)
        return self.fc2(self.dropout(torch.relu(self.fc1(features))))


def pad_batch(
    sequences: Sequence[Sequence[int]], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad index lists into ``[B, T]`` with ``<PAD>``, plus their lengths."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    if len(sequences) == 0 or lengths.min() < 1:
        raise ValueError("every sequence needs at least one token")
    ids = np.full((len(sequences), int(lengths.max())), PAD_INDEX, dtype=np.int64)
    mask = np.arange(ids.shape[1])[None, :] < lengths[:, None]
    ids[mask] = np.fromiter((i for s in sequences for i in s), dtype=np.int64, count=int(lengths.sum()))
    return torch.from_numpy(ids).to(device), torch.from_numpy(lengths)


@torch.inference_mode()
def predict_proba(model: TextClassifier, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Class probabilities (float32, on the model's device) for a padded batch."""
    return torch.softmax(model(ids, lengths).float(), dim=-1)
