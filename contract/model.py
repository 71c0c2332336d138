"""The model half of the artifact contract: config dataclass and the classifier (forward only).

Embedding → recurrent layer → dense → dropout → dense, as in the RNN lesson, but with
packed sequences so padding never enters the recurrence, and the true final state of both
directions for the bidirectional GRU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from contract.recurrence import InferenceGRU
from contract.text import PAD_INDEX, UNK_INDEX, SubwordHasher, Vocabulary

RNN_TYPES = ("rnn", "gru", "bigru")
POOLINGS = ("last", "max", "last_max")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network; saved next to the weights.

    The defaults are the architecture training ships (TrainConfig takes its model defaults from
    here), so a test or benchmark that builds ``ModelConfig(vocab, classes)`` gets the real model,
    except for the character n-grams: ``subword_buckets`` is 0 here, the meaning of a config
    written before the field existed, and training sets it (``TrainConfig.subword_buckets``).
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
    # Hashed character n-grams of every token (0 buckets: none, the format of artifacts written
    # before they existed). They feed the recurrent layer (added to each word's vector), a wide
    # linear head over the whole title's words and n-grams (added to the logits), or both.
    subword_buckets: int = 0
    subword_min_n: int = 3
    subword_max_n: int = 5
    subword_max_per_token: int = 32
    subword_embeddings: bool = True
    subword_head: bool = False
    # A linear model over the title's words, hashed word bigrams and its tokens' n-grams (the
    # embeddings' buckets), fitted on its own before the recurrent layer trains, then added to
    # its logits: ``rnn_scale * recurrent + linear_scale * linear``, the two scales fitted on
    # validation rows. 0 bigram buckets: no bigrams.
    linear_head: bool = False
    linear_bigram_buckets: int = 0
    # The linear head's own n-gram buckets, a multiple of ``subword_buckets`` (0: it shares the
    # embeddings' buckets, the format of artifacts written before the field). A token's n-gram
    # ids are then hashed into this many buckets and the embeddings read each id modulo
    # ``subword_buckets``: the same CRC-32 bucket as before, so one id list serves both tables.
    # (Training's recurrent model, fitted before its head, reads the same ids.)
    linear_gram_buckets: int = 0
    rnn_scale: float = 1.0
    linear_scale: float = 1.0
    # Logits are divided by this before the softmax; fitted on the validation split after
    # training (temperature scaling), 1.0 for an uncalibrated model.
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.rnn_type not in RNN_TYPES:
            raise ValueError(f"rnn_type must be one of {RNN_TYPES}, got {self.rnn_type!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.vocab_size < 2 or self.num_classes < 2:
            raise ValueError("vocab_size and num_classes must be at least 2")
        if self.subword_buckets < 0:
            raise ValueError("subword_buckets must be >= 0")
        if self.subword_head and not self.subword_buckets:
            raise ValueError("subword_head needs subword_buckets > 0")
        if self.linear_head and (not self.subword_buckets or self.subword_head):
            raise ValueError("linear_head needs subword_buckets > 0 and no subword_head")
        if self.linear_bigram_buckets < 0:
            raise ValueError("linear_bigram_buckets must be >= 0")
        if self.linear_gram_buckets and not (
            self.subword_buckets
            and self.linear_gram_buckets > 0
            and self.linear_gram_buckets % self.subword_buckets == 0
        ):
            raise ValueError("linear_gram_buckets must be a positive multiple of subword_buckets (or 0)")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")

    @property
    def gram_buckets(self) -> int:
        """How many n-gram ids a token's features can hold: the linear head's buckets, else the embeddings'."""
        return self.linear_gram_buckets or self.subword_buckets

    def subword_hasher(self, buckets: int | None = None) -> SubwordHasher | None:
        """The tokenizer half of the n-gram features, ids in ``1..gram_buckets`` (or ``1..buckets``);
        None when the model reads no n-grams."""
        if not self.subword_buckets:
            return None
        return SubwordHasher(
            buckets or self.gram_buckets, self.subword_min_n, self.subword_max_n, self.subword_max_per_token
        )

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
        self.subword_embedding = (
            nn.Embedding(config.subword_buckets + 1, config.embedding_dim, padding_idx=0)
            if config.subword_buckets and config.subword_embeddings
            else None
        )
        # The wide head: one weight per class for every word and every n-gram bucket, like a
        # linear model on a bag of words and character n-grams, trained jointly with the GRU.
        # It starts at zero, so training begins from the recurrent model alone.
        self.head_words: nn.Embedding | None = None
        self.head_grams: nn.Embedding | None = None
        if config.subword_head:
            self.head_words = nn.Embedding(config.vocab_size, config.num_classes, padding_idx=PAD_INDEX)
            self.head_grams = nn.Embedding(config.subword_buckets + 1, config.num_classes, padding_idx=0)
            nn.init.zeros_(self.head_words.weight)
            nn.init.zeros_(self.head_grams.weight)
        # The linear head: per word, bigram bucket and n-gram bucket one weight per class (the
        # linear model's weight times the feature's idf) and, in the last column, the idf squared,
        # so one sum gives both a bag's scores and its squared L2 norm. Set by training.
        self.linear_words: nn.Embedding | None = None
        self.linear_grams: nn.Embedding | None = None
        self.linear_bigrams: nn.Embedding | None = None
        self.linear_bias: nn.Parameter | None = None
        if config.linear_head:
            width = config.num_classes + 1
            self.linear_words = nn.Embedding(config.vocab_size, width, padding_idx=PAD_INDEX)
            self.linear_grams = nn.Embedding(config.gram_buckets + 1, width, padding_idx=0)
            if config.linear_bigram_buckets:
                self.linear_bigrams = nn.Embedding(config.linear_bigram_buckets + 1, width, padding_idx=0)
            self.linear_bias = nn.Parameter(torch.zeros(config.num_classes))
            for table in (self.linear_words, self.linear_grams, self.linear_bigrams):
                if table is not None:
                    nn.init.zeros_(table.weight)
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
        # Set by fold_word_ngrams and fuse_recurrence for serving; not part of the saved weights.
        self.folded: torch.Tensor | None
        self.register_buffer("folded", None, persistent=False)
        self.folded_linear: torch.Tensor | None
        self.register_buffer("folded_linear", None, persistent=False)
        self.fused: InferenceGRU | None = None

    @torch.no_grad()
    def fold_word_ngrams(self, vocab: Vocabulary) -> None:
        """Precompute each vocabulary word's input vector (its word vector plus the mean of its
        n-gram vectors) so that serving looks a known word up once instead of averaging its
        n-grams on every request; only tokens outside the vocabulary still need their n-grams.

        The linear head's rows are folded the same way (``folded_linear``: each word's own row,
        then the sum of its n-grams' rows).

        For inference only: a model in training mode ignores the tables, and they are not updated
        when the weights change, so fold again after loading other weights. Models without
        n-grams, or with the wide head (which reads every token's n-grams), are left as they are.
        """
        hasher = self.config.subword_hasher()
        if hasher is None or self.head_words is not None:
            return
        if self.subword_embedding is None and self.linear_grams is None:
            return
        if len(vocab) != self.config.vocab_size:
            raise ValueError(f"vocabulary has {len(vocab)} words, the model {self.config.vocab_size}")
        # <PAD> and <UNK> have no n-grams (an empty bag averages to zeros).
        grams = [() if i < 2 else hasher(word) for i, word in enumerate(vocab.itos)]
        device = self.embedding.weight.device
        flat = torch.tensor([g for word in grams for g in word], dtype=torch.long, device=device)
        offsets = torch.tensor(np.cumsum([0, *map(len, grams[:-1])]), dtype=torch.long, device=device)
        if self.subword_embedding is not None:
            pieces = F.embedding_bag(self.embedding_grams(flat), self.subword_embedding.weight, offsets, mode="mean")
            self.folded = self.embedding.weight + pieces
        if self.linear_words is not None and self.linear_grams is not None:
            # Per word: its own row, then the sum of its n-grams' rows (the bag's character part).
            char_part = F.embedding_bag(flat, self.linear_grams.weight, offsets, mode="sum")
            self.folded_linear = torch.cat([self.linear_words.weight, char_part], dim=1)

    def embedding_grams(self, grams: torch.Tensor) -> torch.Tensor:
        """The embedding buckets of n-gram ids hashed into ``gram_buckets`` (0 stays padding)."""
        buckets = self.config.subword_buckets
        if self.config.gram_buckets == buckets:
            return grams
        return torch.fmod(grams - 1, buckets) + 1  # fmod keeps the sign: padding's -1 gives 0 again

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token vectors ``[B, T, E]``: the word's vector plus the mean of its n-gram vectors.

        ``ids`` is ``[B, T]`` word indices, or ``[B, T, 1 + K]`` with the word index first and
        up to K n-gram bucket ids (0-padded) after it for a model with subword embeddings.
        An unknown word is ``<UNK>``'s vector plus its n-grams, which training simulates by
        word dropout (the word index is dropped, its n-grams are kept).
        """
        if self.subword_embedding is None:
            return self.embedding(ids[..., 0] if ids.dim() == 3 else ids)
        if ids.dim() != 3:
            raise ValueError("this model has subword embeddings: ids must be [B, T, 1 + K] (see TextEncoder)")
        words, grams = ids[..., 0], ids[..., 1:]
        if self.folded is not None and not self.training:
            return self._embed_folded(words, grams)
        # Every word has at least one n-gram ("<a>" for "a"), so a known word without any was
        # encoded for a folded vocabulary: refuse it rather than answer from half the input.
        known = words > UNK_INDEX
        if bool((known if grams.shape[-1] == 0 else known & (grams[..., 0] == 0)).any()):
            raise ValueError(
                "known words came without their n-grams (TextEncoder(known_word_grams=False)); this model "
                "has no folded vocabulary (TextClassifier.fold_word_ngrams)"
            )
        if grams.shape[-1] == 0:  # no token has an n-gram (texts that preprocessed to nothing)
            return self._embed_words(words)
        # One fused gather-and-average per token: materialising every n-gram vector first
        # ([B, T, K, E]) and summing it took most of the forward pass. Only the real ids go in,
        # one bag per token: most of the K columns are padding, which the kernel would still walk
        # and sort in the backward pass. A token with no n-grams gets zeros.
        flat = grams.reshape(-1, grams.shape[-1])
        real = flat != 0
        counts = real.sum(dim=1)
        offsets = torch.cumsum(counts, dim=0) - counts
        table = self.subword_embedding.weight
        grams_read = self.embedding_grams(flat[real])
        if self.subword_embedding.sparse:
            # Training with sparse table gradients: the bags read a gathered copy of the rows the
            # batch uses, so backward yields one gradient row per distinct n-gram (see SparseRows).
            rows, grams_read = torch.unique(grams_read, return_inverse=True)
            table = SparseRows.apply(table, rows)
        pieces = F.embedding_bag(grams_read, table, offsets, mode="mean")
        return self._embed_words(words) + pieces.view(*grams.shape[:2], -1)

    def _embed_words(self, words: torch.Tensor) -> torch.Tensor:
        """The word vectors of ``words``; with a sparse word table (training), a gathered copy of
        the distinct words' rows, whose gradient is one sparse row per distinct word."""
        if not self.embedding.sparse:
            return self.embedding(words)
        rows, inverse = torch.unique(words, return_inverse=True)
        return F.embedding(inverse, SparseRows.apply(self.embedding.weight, rows, PAD_INDEX))

    def _embed_folded(self, words: torch.Tensor, grams: torch.Tensor) -> torch.Tensor:
        """:meth:`embed` with the folded vocabulary: known words are one lookup (any n-gram ids
        they carry are already in it); only ``<UNK>`` tokens add the mean of their n-grams."""
        assert self.folded is not None
        x = F.embedding(words, self.folded)
        unseen = self._unseen_pieces(words, grams)
        if unseen is None:
            return x
        rows, pieces = unseen
        return x.reshape(-1, x.shape[-1]).index_add(0, rows, pieces).view_as(x)

    def _unseen_pieces(self, words: torch.Tensor, grams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """For a folded vocabulary: the flat positions of ``<UNK>`` tokens that carry n-grams and
        the mean of their n-gram vectors (None when there are none)."""
        assert self.subword_embedding is not None
        if grams.shape[-1] == 0:
            return None
        flat_words = words.reshape(-1)
        flat_grams = grams.reshape(flat_words.shape[0], -1)
        rows = ((flat_words == UNK_INDEX) & (flat_grams[:, 0] != 0)).nonzero().squeeze(1)
        if rows.numel() == 0:
            return None
        pieces = F.embedding_bag(
            self.embedding_grams(flat_grams[rows]), self.subword_embedding.weight, mode="mean", padding_idx=0
        )
        return rows, pieces

    @torch.no_grad()
    def fuse_recurrence(self) -> None:
        """Build the serving recurrence (:mod:`contract.recurrence`) from the current weights:
        each vocabulary word's input gates precomputed, both directions stepped together.

        Used in eval mode on the CPU, where it is several times faster than ``nn.GRU`` on
        headline-sized batches; call after :meth:`fold_word_ngrams`, and again after loading
        other weights. Only GRU models whose known words have one input vector each get it (not
        a model with n-gram embeddings left unfolded, such as one with the wide head).
        """
        if not isinstance(self.rnn, nn.GRU):
            return
        vectors = self.embedding.weight if self.subword_embedding is None else self.folded
        if vectors is not None:
            self.fused = InferenceGRU(self.rnn, vectors)

    def wide_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """The wide head's logits ``[B, C]`` for ``[B, T, 1 + K]`` features.

        The sum of the weights of every word and n-gram in the title, divided by the square
        root of their number (an L2-normalised binary bag, as TF-IDF vectors are), so a long
        title does not get larger logits. Padding (word 0, bucket 0) has zero weights.
        """
        assert self.head_words is not None and self.head_grams is not None
        words, grams = ids[..., 0], ids[..., 1:]
        total = self.head_words(words).sum(dim=1) + self.head_grams(grams).sum(dim=(1, 2))
        count = (words != PAD_INDEX).sum(dim=1) + (grams != 0).sum(dim=(1, 2))
        return total / count.clamp_min(1).unsqueeze(1).to(total.dtype).sqrt()

    def linear_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """The linear head's logits ``[B, C]`` for ``[B, T, 1 + K]`` features.

        Two TF-IDF bags, each divided by its own L2 norm as a linear model on TF-IDF features
        is: the words and hashed word bigrams (both words known), and the tokens' character
        n-grams. Every occurrence counts once towards a bag's squared norm. With the folded
        table (serving), a known word's row already holds its n-grams; only ``<UNK>`` tokens
        read theirs from the input.
        """
        assert self.linear_words is not None and self.linear_grams is not None and self.linear_bias is not None
        words, grams = ids[..., 0], ids[..., 1:]
        width = self.config.num_classes + 1
        if self.folded_linear is not None and not self.training:
            both = F.embedding(words, self.folded_linear).sum(dim=1)
            word_bag, char_bag = both[:, :width], both[:, width:]
            if grams.shape[-1]:
                flat_words = words.reshape(-1)
                flat_grams = grams.reshape(flat_words.shape[0], -1)
                unseen = ((flat_words == UNK_INDEX) & (flat_grams[:, 0] != 0)).nonzero().squeeze(1)
                if unseen.numel():
                    pieces = F.embedding_bag(flat_grams[unseen], self.linear_grams.weight, mode="sum", padding_idx=0)
                    char_bag = char_bag.index_add(0, torch.div(unseen, words.shape[1], rounding_mode="floor"), pieces)
        else:
            word_bag = self.linear_words(words).sum(dim=1)
            char_bag = self.linear_grams(grams).sum(dim=(1, 2))
        if self.linear_bigrams is not None and words.shape[1] > 1:
            word_bag = word_bag + self.linear_bigrams(bigram_buckets(words, self.config.linear_bigram_buckets)).sum(1)
        scores = [bag[:, :-1] / bag[:, -1:].clamp_min(1e-12).sqrt() for bag in (word_bag, char_bag)]
        return scores[0] + scores[1] + self.linear_bias

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor, pack: bool | None = None) -> torch.Tensor:
        """``ids``: [B, T] token indices (or [B, T, 1 + K] with n-grams, see :meth:`embed`),
        ``lengths``: [B] true lengths (≥ 1, on any device).

        ``pack=None`` packs only when rows differ in length: a batch of equal-length rows (the
        common case with length-bucketed batches) has no padding, so the plain recurrence gives
        the same result without the packing overhead. ``pack=False`` forces the plain path and
        is only correct when no row is padded.
        """
        if self.config.subword_buckets and ids.dim() != 3:
            raise ValueError("this model reads character n-grams: ids must be [B, T, 1 + K] (see TextEncoder)")
        wide = self.wide_logits(ids) if self.head_words is not None else None
        linear = self.linear_logits(ids) if self.linear_words is not None else None
        if self.fused is not None and not self.training and ids.device.type == "cpu":
            words = ids[..., 0] if ids.dim() == 3 else ids
            unseen = None if self.subword_embedding is None else self._unseen_pieces(words, ids[..., 1:])
            if unseen is not None:
                assert self.folded is not None
                unseen = (unseen[0], self.folded[UNK_INDEX] + unseen[1])
            features = self.fused(words, lengths, unseen, self.config.pooling)
        else:
            features = self._recur(self.embedding_dropout(self.embed(ids)), ids, lengths, pack)
        logits = self.fc2(self.dropout(torch.relu(self.fc1(features))))
        if linear is not None:
            logits = self.config.rnn_scale * logits + self.config.linear_scale * linear
        return logits if wide is None else logits + wide

    def _recur(self, x: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor, pack: bool | None) -> torch.Tensor:
        """``nn.GRU``/``nn.RNN`` over the token vectors ``x`` (what training runs): the features the
        dense layers read, per ``config.pooling`` (see :meth:`contract.recurrence.InferenceGRU.forward`)."""
        if ids.dim() == 3:
            ids = ids[..., 0]
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
            return last
        if out_packed is not None:
            # Padding comes back as -inf, so the max over time sees each row's own tokens only
            # (every row has at least one); unpacked rows have no padding to hide.
            out, _ = pad_packed_sequence(
                out_packed, batch_first=True, padding_value=float("-inf"), total_length=ids.shape[1]
            )
        pooled = out.amax(dim=1)
        return pooled if self.config.pooling == "max" else torch.cat([last, pooled], dim=1)


class SparseRows(torch.autograd.Function):
    """``table[rows]`` for distinct, sorted ``rows``, whose gradient for ``table`` is a coalesced
    sparse tensor holding those rows only (zero for ``padding_row``, as ``nn.Embedding``'s
    ``padding_idx`` keeps it).

    A dense table gradient costs the whole table on every batch (zeroing it, adding into it,
    an optimizer pass over it); this one costs the rows the batch read, and needs no coalescing,
    since ``torch.unique`` already merged the repeats.
    """

    @staticmethod
    def forward(ctx: Any, table: torch.Tensor, rows: torch.Tensor, padding_row: int | None = None) -> torch.Tensor:
        ctx.save_for_backward(rows)
        ctx.table_shape = table.shape
        ctx.padding_row = padding_row
        return table.index_select(0, rows)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (rows,) = ctx.saved_tensors
        if ctx.padding_row is not None:
            grad = grad.masked_fill((rows == ctx.padding_row).unsqueeze(1), 0.0)
        sparse = torch.sparse_coo_tensor(
            rows.unsqueeze(0), grad, ctx.table_shape, is_coalesced=True, check_invariants=False
        )
        return sparse, None, None


def bigram_buckets(words: torch.Tensor, buckets: int) -> torch.Tensor:
    """Bucket ids ``1..buckets`` of every pair of neighbouring word indices ``[B, T - 1]``; 0 (none)
    where either word is padding or ``<UNK>``. The linear head's bigram features, in training and
    serving alike."""
    first, second = words[:, :-1], words[:, 1:]
    ids = (first * 1_000_003 + second) % buckets + 1
    return ids.masked_fill((first <= UNK_INDEX) | (second <= UNK_INDEX), 0)


def pad_batch(
    sequences: Sequence[Sequence[Any]], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad encoded texts into ``[B, T]`` (or ``[B, T, 1 + K]`` for subword features,
    see :class:`contract.text.TextEncoder`) with ``<PAD>``/0, plus their lengths."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    if len(sequences) == 0 or lengths.min() < 1:
        raise ValueError("every sequence needs at least one token")
    if isinstance(sequences[0][0], tuple):
        tokens = list(chain.from_iterable(sequences))
        widths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
        ids = np.zeros((len(sequences), int(lengths.max()), int(widths.max())), dtype=np.int64)
        rows = np.repeat(np.arange(len(sequences)), lengths)
        cols = np.arange(len(tokens)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        ids[rows, cols, 0] = np.fromiter(map(itemgetter(0), tokens), dtype=np.int64, count=len(tokens))
        # Only tokens with n-gram ids are walked item by item (with a folded vocabulary, the
        # few unknown words; see TextEncoder's known_word_grams).
        with_grams = np.flatnonzero(widths > 1)
        if with_grams.size:
            counts = widths[with_grams] - 1
            total = int(counts.sum())
            flat = np.fromiter(
                chain.from_iterable(tokens[i][1:] for i in with_grams.tolist()), dtype=np.int64, count=total
            )
            depth = 1 + np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
            ids[np.repeat(rows[with_grams], counts), np.repeat(cols[with_grams], counts), depth] = flat
        return torch.from_numpy(ids).to(device), torch.from_numpy(lengths)
    ids = np.full((len(sequences), int(lengths.max())), PAD_INDEX, dtype=np.int64)
    mask = np.arange(ids.shape[1])[None, :] < lengths[:, None]
    ids[mask] = np.fromiter((i for s in sequences for i in s), dtype=np.int64, count=int(lengths.sum()))
    return torch.from_numpy(ids).to(device), torch.from_numpy(lengths)


def probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Softmax of temperature-scaled logits (float32): what the service serves."""
    return torch.softmax(logits.float() / temperature, dim=-1)


@torch.inference_mode()
def predict_proba(model: TextClassifier, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Calibrated class probabilities (float32, on the model's device) for a padded batch."""
    return probabilities(model(ids, lengths), model.config.temperature)
