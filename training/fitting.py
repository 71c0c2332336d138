"""One model from some rows: vocabulary, encoding, initial embeddings and the epoch loop."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from contract.artifact import round_weights_
from contract.model import TextClassifier
from contract.text import LabelEncoder, PreprocessSettings, Vocabulary
from training import distributed
from training.config import TrainConfig
from training.data import encode_matrix, stratified_halves, subword_table
from training.embeddings import init_lsa_, init_normal_
from training.engine import EncodedRows, FitResult, fit, format_epoch, predict_logits, progress_enabled
from training.linear_head import LinearHead, count_bags, fit_linear_head, load_linear_head_

Say = Callable[..., None]


@dataclass
class Corpus:
    """The preprocessed rows every split of one run draws from."""

    titles: list[str]
    tokens: list[list[str]]
    targets: np.ndarray
    labels: LabelEncoder
    preprocessing: PreprocessSettings


@dataclass
class Fitted:
    """A model trained on some rows, with the encoding it was trained with."""

    model: TextClassifier
    vocab: Vocabulary
    ids: np.ndarray
    lengths: np.ndarray
    table: torch.Tensor | None
    result: FitResult
    timing: dict[str, Any]
    linear: LinearHead | None = None

    def logits(self, rows: np.ndarray, device: torch.device) -> torch.Tensor:
        """Logits (CPU, float32) of this model for some rows of the corpus."""
        return predict_logits(self.model, self.ids[rows], self.lengths[rows], device, token_table=self.table)

    def logit_parts(self, rows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The recurrent layer's and the linear head's logits, each unscaled, for some rows."""
        config = self.model.config
        parts = []
        for rnn_scale, linear_scale in ((1.0, 0.0), (0.0, 1.0)):
            self.model.config = replace(config, rnn_scale=rnn_scale, linear_scale=linear_scale)
            parts.append(self.logits(rows, device))
        self.model.config = config
        return parts[0], parts[1]


def class_weight_tensor(targets: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, normalised to mean 1."""
    counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
    weights = counts.sum() / (num_classes * np.maximum(counts, 1))
    return torch.tensor(weights / weights.mean(), dtype=torch.float32)


def word_dropout_rates(
    vocab: Vocabulary, token_lists: list[list[str]], rate: float, rare_rate: float | None, rare_titles: int
) -> torch.Tensor | None:
    """Word dropout per word index: ``rare_rate`` for the words found in at most ``rare_titles`` of
    the training titles, ``rate`` for the others (None when both are the same).

    The words later news brings that training never saw are rare ones: dropping the training
    rows' rare words more often teaches the model to read a title from its known words and the
    unknown words' n-grams, the situation it meets on new text.
    """
    if rare_rate is None or rare_rate == rate:
        return None
    titles: Counter[str] = Counter(t for tokens in token_lists for t in set(tokens))
    rare = torch.tensor([i >= 2 and titles[w] <= rare_titles for i, w in enumerate(vocab.itos)])
    rates = torch.where(rare, rare_rate, rate)
    rates[:2] = 0.0  # <PAD> stays padding; <UNK> is already unknown
    return rates


def build_model(
    config: TrainConfig, vocab: Vocabulary, num_classes: int, token_lists: list[list[str]]
) -> tuple[TextClassifier, dict[str, Any]]:
    """A fresh classifier with its initial embeddings (LSA vectors of ``token_lists`` by default); the
    linear head, fitted apart, is added after training (:func:`with_linear_head`)."""
    timing: dict[str, Any] = {}
    model = TextClassifier(replace(config.model_config(len(vocab), num_classes), linear_head=False))
    if config.embedding_init_std is not None:
        init_normal_(model, config.embedding_init_std)
    if config.embedding_init == "lsa":
        t0 = time.perf_counter()
        std = config.embedding_init_std or 0.1
        init_lsa_(model, token_lists, vocab, std, config.seed, config.subword_lsa_init)
        timing["embedding_init_s"] = round(time.perf_counter() - t0, 3)
    return model, timing


def fit_model(
    config: TrainConfig,
    dist: distributed.DistContext,
    corpus: Corpus,
    fit_idx: np.ndarray,
    val_idx: np.ndarray,
    say: Say,
    lr_schedule: list[float] | None = None,
    linear_c: float | None = None,
) -> Fitted:
    """Vocabulary, encoding, initial embeddings and training, all from the ``fit_idx`` rows only.

    With ``config.linear_head`` the linear head is fitted on the same rows after the recurrent
    model has trained (its C chosen on ``val_idx`` unless ``linear_c`` is given) and added with
    both scales 1; ``training.pipeline`` fits the scales.
    """
    tokens, targets, labels = corpus.tokens, corpus.targets, corpus.labels
    vocab = Vocabulary.fit((tokens[i] for i in fit_idx), max_size=config.max_vocab, min_freq=config.min_freq)
    hasher = config.model_config(len(vocab), len(labels)).subword_hasher()
    table: torch.Tensor | None = None
    if hasher is None:
        ids, lengths = encode_matrix(tokens, vocab)
    else:
        # Every token type of the run gets a row of (word index, n-gram ids); a text is then
        # encoded once, as indices into that table, exactly as a server would encode it.
        extended, rows = subword_table(vocab, tokens, hasher)
        ids, lengths = encode_matrix(tokens, extended)
        table = torch.from_numpy(rows)
    say(f"vocabulary: {len(vocab)} tokens (min_freq {config.min_freq}, max {config.max_vocab}); {labels.classes}")

    torch.manual_seed(config.seed)
    model, timing = build_model(config, vocab, len(labels), [tokens[i] for i in fit_idx])
    model = model.to(dist.device)
    # Same initial weights everywhere (DDP broadcasts rank 0's anyway); per-rank dropout noise.
    torch.manual_seed(config.seed + dist.rank)
    weights = class_weight_tensor(targets[fit_idx], len(labels)) if config.class_weights else None
    dropout_rates = word_dropout_rates(
        vocab, [tokens[i] for i in fit_idx], config.word_dropout, config.rare_word_dropout, config.rare_word_titles
    )
    say(f"training {config.model} on {dist.device} x{dist.world_size}, {torch.get_num_threads()} CPU thread(s)")
    fit_result = fit(
        model,
        EncodedRows(ids[fit_idx], lengths[fit_idx], targets[fit_idx]),
        EncodedRows(ids[val_idx], lengths[val_idx], targets[val_idx]),
        config.fit_config(),
        dist=dist,
        class_weights=weights,
        token_table=table,
        word_dropout_rates=dropout_rates,
        lr_schedule=lr_schedule,
        progress=dist.is_main and progress_enabled(config.quiet),
        log_epoch=lambda record: say(format_epoch(record)),
    )
    epoch_seconds = [h["seconds"] for h in fit_result.history]
    timing.update(
        train_s=round(fit_result.train_seconds, 3),
        epochs_run=len(epoch_seconds),
        seconds_per_epoch=round(float(np.mean(epoch_seconds)), 3),
        seconds_per_epoch_min=round(float(np.min(epoch_seconds)), 3),
        threads=torch.get_num_threads(),
        device=str(dist.device),
        world_size=dist.world_size,
    )
    model.eval()
    linear = None
    if config.linear_head:
        assert table is not None
        t0 = time.perf_counter()
        model, linear = with_linear_head(config, model, ids, table, vocab, targets, fit_idx, val_idx, linear_c)
        timing["linear_head_s"] = round(time.perf_counter() - t0, 3)
        say(f"linear head: C {linear.c}" + ("" if linear.val_f1 is None else f", val F1 {linear.val_f1:.4f}"))
    round_weights_(model, config.weights_dtype)  # evaluate exactly what the artifact stores
    return Fitted(model, vocab, ids, lengths, table, fit_result, timing, linear)


def with_linear_head(
    config: TrainConfig,
    model: TextClassifier,
    ids: np.ndarray,
    table: torch.Tensor,
    vocab: Vocabulary,
    targets: np.ndarray,
    fit_idx: np.ndarray,
    val_idx: np.ndarray,
    c: float | None,
) -> tuple[TextClassifier, LinearHead]:
    """The trained recurrent model plus a linear head fitted on the same rows (scales 1 and 1)."""
    bags = count_bags(ids, table.numpy(), len(vocab), model.config.gram_buckets, config.linear_bigram_buckets)
    head = fit_linear_head(bags, targets, fit_idx, val_idx if c is None else None, c)
    combined = TextClassifier(config.model_config(len(vocab), model.config.num_classes)).to(model.fc2.weight.device)
    missing = combined.load_state_dict(model.state_dict(), strict=False).missing_keys
    assert all(key.startswith("linear_") for key in missing), missing
    load_linear_head_(combined, head, bags)
    return combined.eval(), head


def crossfit_val_logits(
    config: TrainConfig,
    dist: distributed.DistContext,
    corpus: Corpus,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    schedule: list[float],
    say: Say,
) -> torch.Tensor:
    """Out-of-fold logits for every validation row, from models trained the way the refit is.

    The refit model has seen the validation rows, so its own logits on them are too confident
    to fit a temperature on; the first run's model saw fewer rows and steps than the refit,
    so its temperature is off for the model shipped. Here the validation rows are dealt into
    two class-balanced halves, and each half is predicted by a model trained on train + the
    other half with the refit's learning-rate schedule: closer to the shipped model, and every
    validation row is still held out from the model that scores it.
    """
    halves = stratified_halves(corpus.targets[val_idx], config.seed)
    out = torch.empty((len(val_idx), len(corpus.labels)), dtype=torch.float32)
    for held, used in (halves, halves[::-1]):
        held_rows, used_rows = val_idx[held], val_idx[used]
        say(f"temperature cross-fit: train + {len(used_rows)} val rows, scoring the other {len(held_rows)}")
        fitted = fit_model(
            config, dist, corpus, np.sort(np.concatenate([train_idx, used_rows])), held_rows, say, schedule
        )
        out[torch.from_numpy(held)] = fitted.logits(held_rows, dist.device)
    return out
