"""One training run: config → data → engine → evaluate → artifact."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contract.artifact import round_weights_, sha256_file, write_artifact
from contract.model import ModelConfig, TextClassifier, probabilities
from contract.text import (
    PAD_INDEX,
    LabelEncoder,
    Normalizer,
    PreprocessSettings,
    SubwordHasher,
    Vocabulary,
    load_stopwords,
)
from training import distributed
from training.calibration import calibration_report
from training.config import TrainConfig
from training.data import (
    encode_matrix,
    fetch_data,
    read_dataset,
    sample_rows,
    stratified_halves,
    stratified_split,
    subword_table,
    time_split,
)
from training.engine import fit, format_epoch, predict_logits, progress_enabled
from training.evaluate import BASELINE_NAME, confusion, performance, plot_files, tfidf_baseline
from training.reference import drift_reference


@dataclass
class RunResult:
    """What a run produced; ``artifact_path`` is None on ranks other than 0."""

    artifact_path: Path | None
    metrics: dict[str, Any]
    model: TextClassifier | None = field(default=None, repr=False)
    vocab: Vocabulary | None = field(default=None, repr=False)
    labels: LabelEncoder | None = field(default=None, repr=False)
    preprocessing: PreprocessSettings | None = field(default=None, repr=False)


def git_commit(where: Path | None = None) -> str | None:
    """Commit of the repository holding the training code, or None outside git."""
    folder = where or Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def class_weight_tensor(targets: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, normalised to mean 1."""
    counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
    weights = counts.sum() / (num_classes * np.maximum(counts, 1))
    return torch.tensor(weights / weights.mean(), dtype=torch.float32)


def build_model_config(config: TrainConfig, vocab_size: int, num_classes: int) -> ModelConfig:
    return ModelConfig(
        vocab_size=vocab_size,
        num_classes=num_classes,
        rnn_type=config.model,
        embedding_dim=config.embedding_dim,
        hidden_dim=config.hidden_dim,
        fc_dim=config.fc_dim,
        dropout=config.dropout,
        embedding_dropout=config.embedding_dropout,
        pooling=config.pooling,
        subword_buckets=config.subword_buckets,
        subword_min_n=config.subword_min_n,
        subword_max_n=config.subword_max_n,
    )


def build_model(config: TrainConfig, vocab_size: int, num_classes: int) -> TextClassifier:
    """A fresh classifier; embeddings start small (torch's N(0, 1) saturates the GRU early on)."""
    model = TextClassifier(build_model_config(config, vocab_size, num_classes))
    if config.embedding_init_std is not None:
        with torch.no_grad():
            model.embedding.weight.normal_(0.0, config.embedding_init_std)
            model.embedding.weight[PAD_INDEX].zero_()
            if model.subword_embedding is not None:
                model.subword_embedding.weight.normal_(0.0, config.embedding_init_std)
                model.subword_embedding.weight[0].zero_()
    return model


def lsa_embeddings(token_lists, vocab: Vocabulary, dim: int, std: float, seed: int) -> torch.Tensor:
    """Word vectors from a truncated SVD of the training split's TF-IDF matrix, scaled to ``std``.

    Words that share titles start close together, so a word seen once or twice in training
    starts near the words it appeared with instead of at a random point.
    """
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    words = {w: i - 2 for i, w in enumerate(vocab.itos) if i >= 2}
    docs = [" ".join(tokens) for tokens in token_lists]
    vectorizer = TfidfVectorizer(vocabulary=words, tokenizer=str.split, token_pattern=None, lowercase=False)
    x = vectorizer.fit_transform(docs)
    k = min(dim, x.shape[0] - 1, x.shape[1] - 1)
    rng = np.random.default_rng(seed)
    vectors = np.zeros((len(vocab), dim), dtype=np.float32)
    if k < 1:  # a toy vocabulary: nothing to decompose
        vectors[1:] = rng.normal(0.0, std, size=(len(vocab) - 1, dim))
        return torch.from_numpy(vectors)
    svd = TruncatedSVD(n_components=k, random_state=seed).fit(x)
    vectors[2:, :k] = svd.components_.T * svd.singular_values_
    vectors[2:] *= std / max(float(vectors[2:, :k].std()), 1e-12)
    vectors[1] = rng.normal(0.0, std, size=dim)  # <UNK>: learnt through word dropout
    return torch.from_numpy(vectors)


def split_subword_vectors(
    vectors: torch.Tensor, vocab: Vocabulary, hasher: SubwordHasher
) -> tuple[torch.Tensor, torch.Tensor]:
    """Share each word's LSA vector between the word and its character n-grams.

    An n-gram bucket starts at the mean vector of the training words that contain it, and a
    word keeps the rest, so every known word starts exactly at its LSA vector while a word
    never seen in training starts at the mean of its n-grams' vectors: near known words that
    share its pieces, instead of at <UNK>.
    """
    from scipy import sparse

    rows: list[int] = []
    cols: list[int] = []
    for index, word in enumerate(vocab.itos[2:], start=2):
        grams = hasher(word)
        rows += [index] * len(grams)
        cols += grams
    words_to_grams = sparse.csr_matrix(
        (np.ones(len(rows)), (rows, cols)), shape=(len(vocab), hasher.buckets + 1), dtype=np.float64
    )
    base = vectors.double().numpy()
    per_gram = np.asarray(words_to_grams.sum(axis=0)).ravel()
    gram_vectors = (words_to_grams.T @ base) / np.maximum(per_gram, 1)[:, None]
    gram_vectors[0] = 0.0  # padding bucket
    per_word = np.asarray(words_to_grams.sum(axis=1)).ravel()
    word_gram_mean = (words_to_grams @ gram_vectors) / np.maximum(per_word, 1)[:, None]
    word_vectors = base - word_gram_mean
    word_vectors[:2] = base[:2]  # <PAD> and <UNK> have no n-grams
    return torch.from_numpy(word_vectors).float(), torch.from_numpy(gram_vectors).float()


def run(config: TrainConfig) -> RunResult:
    """Train, evaluate and (on rank 0) write a new artifact version; see ``python -m training -h``."""
    config.validate()
    started = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    dist = distributed.setup(config.device)
    try:
        return _run(config, dist, started)
    finally:
        dist.close()


@dataclass
class _Corpus:
    """The preprocessed rows every split of one run draws from."""

    titles: list[str]
    tokens: list[list[str]]
    targets: np.ndarray
    labels: LabelEncoder
    preprocessing: PreprocessSettings


def split_indices(kind: str, labels: list[str], config: TrainConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of train/val/test for ``kind`` ("random" or "time")."""
    fractions = (1 - config.val_fraction - config.test_fraction, config.val_fraction, config.test_fraction)
    if kind == "time":
        return time_split(labels, fractions)
    return stratified_split(labels, config.seed, fractions)


def _run(config: TrainConfig, dist: distributed.DistContext, started: float) -> RunResult:
    say = print if dist.is_main and not config.quiet else (lambda *a, **k: None)
    timing: dict[str, Any] = {}

    t0 = time.perf_counter()
    path = fetch_data(config.data, config.cache_dir) if dist.is_main else None
    if dist.enabled:
        dist.barrier()  # rank 0 downloads; the others then find the file in the cache
        path = fetch_data(config.data, config.cache_dir)
    assert path is not None
    dataset = read_dataset(path)
    keep = sample_rows(len(dataset), config.limit_rows, config.seed)
    titles = [dataset.titles[i] for i in keep]
    raw_labels = [dataset.labels[i] for i in keep]
    say(
        f"data: {path} — {len(dataset)} usable rows, {dataset.dropped_empty} dropped (empty title or category); "
        f"using {len(titles)}"
    )
    timing["load_s"] = round(time.perf_counter() - t0, 3)

    t0 = time.perf_counter()
    stopwords: tuple[str, ...] = ()
    if config.remove_stopwords:
        # Only rank 0 looks the list up (and may download it); the others receive it, so they
        # need neither NLTK data nor the network, and every rank uses the same list.
        found = load_stopwords(config.nltk_data) if dist.is_main else None
        stopwords = tuple(dist.broadcast_object(found))
    preprocessing = PreprocessSettings(remove_stopwords=config.remove_stopwords, stopwords=stopwords)
    normalizer = Normalizer(preprocessing)
    labels = LabelEncoder.fit(raw_labels)
    corpus = _Corpus(
        titles=titles,
        tokens=[normalizer.tokens(t) for t in titles],
        targets=np.asarray(labels.encode(raw_labels), dtype=np.int64),
        labels=labels,
        preprocessing=preprocessing,
    )
    timing["preprocess_s"] = round(time.perf_counter() - t0, 3)

    kinds = ["time", "random"] if config.split == "both" else [config.split]
    summaries: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        split = split_indices(kind, raw_labels, config)
        outcome = _train_split(config, dist, kind, corpus, split, say)
        summaries[kind] = _split_summary(outcome.metrics)
    model, vocab, metrics, extra = outcome.model, outcome.vocab, outcome.metrics, outcome.extra
    metrics["splits"] = summaries
    metrics["data"]["dropped_empty_titles"] = dataset.dropped_empty
    metrics["timing"] = {**timing, **metrics["timing"]}
    if not dist.is_main:
        return RunResult(None, metrics, model, vocab, labels, preprocessing)
    metrics["timing"]["total_s"] = round(time.perf_counter() - started, 3)
    artifact_path = write_artifact(
        config.artifacts_dir,
        model=model,
        vocab=vocab,
        labels=labels,
        preprocessing=preprocessing,
        metrics=metrics,
        train_config=config.to_dict(),
        extra_files=extra,
        provenance={"data_sha256": sha256_file(path), "git_commit": git_commit()},
        weights_dtype=config.weights_dtype,
    )
    for kind, summary in summaries.items():
        say(
            f"{kind} split: test weighted F1 {summary['test_f1']:.4f} (best epoch {summary['best_epoch']}); "
            f"TF-IDF baseline {summary['baseline_test_f1']:.4f}"
        )
    print(f"artifact written to {artifact_path}", flush=True)
    return RunResult(artifact_path, metrics, model, vocab, labels, preprocessing)


@dataclass
class _SplitOutcome:
    model: TextClassifier
    vocab: Vocabulary
    metrics: dict[str, Any]
    extra: dict[str, bytes]


def _split_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The numbers that compare splits: F1 of the model and of TF-IDF, calibration, sizes."""
    summary: dict[str, Any] = {
        "test_f1": metrics["test"]["overall"]["f1"],
        "best_epoch": metrics["best_epoch"],
        "data": {k: metrics["data"][k] for k in ("train", "val", "test")},
    }
    if "baseline" in metrics:
        summary["baseline_test_f1"] = metrics["baseline"]["test"]["overall"]["f1"]
        if "train_only_test_f1" in metrics["baseline"]:
            summary["baseline_train_only_test_f1"] = metrics["baseline"]["train_only_test_f1"]
    if "calibration" in metrics:
        summary["calibration"] = {
            "temperature": metrics["calibration"]["temperature"],
            **metrics["calibration"]["test"],
        }
    return summary


@dataclass
class _Fitted:
    """A model trained on some rows, with the encoding it was trained with."""

    model: TextClassifier
    vocab: Vocabulary
    ids: np.ndarray
    lengths: np.ndarray
    table: torch.Tensor | None
    result: Any
    timing: dict[str, Any]


def _fit_model(
    config: TrainConfig,
    dist: distributed.DistContext,
    corpus: _Corpus,
    fit_idx: np.ndarray,
    val_idx: np.ndarray,
    say: Any,
    lr_schedule: list[float] | None = None,
) -> _Fitted:
    """Vocabulary, encoding, initial embeddings and training, all from the ``fit_idx`` rows only."""
    timing: dict[str, Any] = {}
    tokens, targets, labels = corpus.tokens, corpus.targets, corpus.labels
    vocab = Vocabulary.fit((tokens[i] for i in fit_idx), max_size=config.max_vocab, min_freq=config.min_freq)
    model_config = build_model_config(config, len(vocab), len(labels))
    hasher = model_config.subword_hasher()
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
    model = build_model(config, len(vocab), len(labels))
    if config.embedding_init == "lsa":
        t0 = time.perf_counter()
        std = config.embedding_init_std or 0.1
        vectors = lsa_embeddings([tokens[i] for i in fit_idx], vocab, config.embedding_dim, std, config.seed)
        subword_vectors = None
        if hasher is not None and config.subword_lsa_init:
            vectors, subword_vectors = split_subword_vectors(vectors, vocab, hasher)
        with torch.no_grad():
            model.embedding.weight.copy_(vectors)
            if subword_vectors is not None and model.subword_embedding is not None:
                model.subword_embedding.weight.copy_(subword_vectors)
        timing["embedding_init_s"] = round(time.perf_counter() - t0, 3)
    model = model.to(dist.device)
    # Same initial weights everywhere (DDP broadcasts rank 0's anyway); per-rank dropout noise.
    torch.manual_seed(config.seed + dist.rank)
    weights = class_weight_tensor(targets[fit_idx], len(labels)) if config.class_weights else None
    say(f"training {config.model} on {dist.device} x{dist.world_size}, {torch.get_num_threads()} CPU thread(s)")
    fit_result = fit(
        model,
        ids[fit_idx],
        lengths[fit_idx],
        targets[fit_idx],
        ids[val_idx],
        lengths[val_idx],
        targets[val_idx],
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        weight_decay=config.weight_decay,
        label_smoothing=config.label_smoothing,
        word_dropout=config.word_dropout,
        grad_clip=config.grad_clip,
        patience=config.patience,
        lr_patience=config.lr_patience,
        lr_factor=config.lr_factor,
        early_stopping_metric=config.early_stopping_metric,
        class_weights=weights,
        seed=config.seed,
        device=dist.device,
        dist=dist,
        progress=dist.is_main and progress_enabled(config.quiet),
        log_epoch=lambda record: say(format_epoch(record)),
        ema_decay=config.ema_decay,
        token_table=table,
        lr_schedule=lr_schedule,
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
    round_weights_(model, config.weights_dtype)  # evaluate exactly what the artifact stores
    return _Fitted(model, vocab, ids, lengths, table, fit_result, timing)


def crossfit_val_logits(
    config: TrainConfig,
    dist: distributed.DistContext,
    corpus: _Corpus,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    schedule: list[float],
    say: Any,
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
        fitted = _fit_model(
            config, dist, corpus, np.sort(np.concatenate([train_idx, used_rows])), held_rows, say, schedule
        )
        out[torch.from_numpy(held)] = predict_logits(
            fitted.model, fitted.ids[held_rows], fitted.lengths[held_rows], dist.device, token_table=fitted.table
        )
    return out


def _train_split(
    config: TrainConfig,
    dist: distributed.DistContext,
    kind: str,
    corpus: _Corpus,
    split: tuple[np.ndarray, np.ndarray, np.ndarray],
    say: Any,
) -> _SplitOutcome:
    """Fit the vocabulary and the model on one split's training rows; evaluate on its test rows.

    With ``refit``, a second model is then trained on train + validation rows for the epochs
    (and learning rates) the first run chose: the validation rows are the most recent ones on
    the time split, the closest to what comes next. The refit model has trained on the
    validation rows, so its temperature is fitted on held-out logits of another model: the
    first run's (``temperature_fit="first"``), or out-of-fold ones from models trained like the
    refit (``"crossfit"``, ``crossfit_val_logits``); ``bench/calibration_study.py`` compares them.
    """
    train_idx, val_idx, test_idx = split
    tokens, targets, labels = corpus.tokens, corpus.targets, corpus.labels
    say(f"{kind} split: train {len(train_idx)}, val {len(val_idx)}, test {len(test_idx)}")
    first = _fit_model(config, dist, corpus, train_idx, val_idx, say)
    fit_result, timing = first.result, first.timing
    metrics: dict[str, Any] = {"split": kind}
    val_logits = torch.empty(0)
    crossfit = config.refit and config.temperature_fit == "crossfit"
    if config.calibrate and not crossfit:
        val_logits = predict_logits(
            first.model, first.ids[val_idx], first.lengths[val_idx], dist.device, token_table=first.table
        )
    final = first
    if config.refit:
        schedule = [h["lr"] for h in fit_result.history[: fit_result.best_epoch]]
        say(f"refit on train + val ({len(train_idx) + len(val_idx)} rows) for {len(schedule)} epoch(s)")
        final = _fit_model(config, dist, corpus, np.sort(np.concatenate([train_idx, val_idx])), val_idx, say, schedule)
        metrics["refit"] = {"rows": len(train_idx) + len(val_idx), "epochs": len(schedule)}
        timing["refit_train_s"] = final.timing["train_s"]
        if config.calibrate and crossfit:
            t0 = time.perf_counter()
            val_logits = crossfit_val_logits(config, dist, corpus, train_idx, val_idx, schedule, say)
            timing["temperature_crossfit_s"] = round(time.perf_counter() - t0, 3)
    model, vocab, ids, lengths, table = final.model, final.vocab, final.ids, final.lengths, final.table

    t0 = time.perf_counter()
    test_logits = predict_logits(model, ids[test_idx], lengths[test_idx], dist.device, token_table=table)
    test_true = targets[test_idx]
    if config.calibrate:
        metrics["calibration"] = calibration_report(val_logits, targets[val_idx], test_logits, test_true)
        metrics["calibration"]["val_logits_from"] = (
            "crossfit" if crossfit else ("first_model" if config.refit else "shipped_model")
        )
        model.config = replace(model.config, temperature=metrics["calibration"]["temperature"])
    test_probs = probabilities(test_logits, model.config.temperature).numpy()
    test_pred = test_probs.argmax(axis=1)
    test_perf = performance(test_true, test_pred, labels.classes)
    cm = confusion(test_true, test_pred, labels.classes)
    timing["eval_s"] = round(time.perf_counter() - t0, 3)
    metrics.update(
        test=test_perf,
        confusion_matrix=cm,
        history=fit_result.history,
        best_epoch=fit_result.best_epoch,
        data={
            "rows": len(tokens),
            "train": len(train_idx),
            "val": len(val_idx),
            "test": len(test_idx),
        },
        reference=drift_reference([tokens[i] for i in test_idx], vocab.stoi, test_probs, labels.classes),
        timing=timing,
    )
    if not dist.is_main:
        return _SplitOutcome(model, vocab, metrics, {})

    t0 = time.perf_counter()
    titles = corpus.titles
    base_pred, base_info = tfidf_baseline(
        [titles[i] for i in train_idx],
        targets[train_idx],
        [titles[i] for i in val_idx],
        targets[val_idx],
        [titles[i] for i in test_idx],
        c=config.baseline_c,
    )
    if config.refit:
        # The same rows as the shipped model: C chosen on validation, then fitted on train + val.
        fit_rows = np.sort(np.concatenate([train_idx, val_idx]))
        base_info["train_only_test_f1"] = performance(test_true, base_pred, labels.classes)["overall"]["f1"]
        base_pred, _ = tfidf_baseline(
            [titles[i] for i in fit_rows],
            targets[fit_rows],
            [titles[i] for i in val_idx],
            targets[val_idx],
            [titles[i] for i in test_idx],
            c=base_info["C"],
        )
        base_info["fitted_on"] = "train+val"
    base_perf = performance(test_true, base_pred, labels.classes)
    metrics["baseline"] = {"name": BASELINE_NAME, **base_info, "test": base_perf}
    timing["baseline_s"] = round(time.perf_counter() - t0, 3)
    extra = (
        plot_files(fit_result.history, cm, fit_result.best_epoch, metrics.get("calibration")) if config.plots else {}
    )
    return _SplitOutcome(model, vocab, metrics, extra)
