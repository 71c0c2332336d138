"""One training run: config → data → fit → evaluate → artifact.

This module only orchestrates; each stage lives in its own module (data, fitting,
embeddings, calibration, baseline, evaluate, reference, provenance).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contract.artifact import sha256_file, write_artifact
from contract.model import TextClassifier, probabilities
from contract.text import LabelEncoder, Normalizer, PreprocessSettings, Vocabulary, load_stopwords
from training import distributed
from training.baseline import anchor_report, baseline_report
from training.calibration import calibration_report, fit_scales
from training.config import TrainConfig
from training.data import Dataset, fetch_data, read_dataset, sample_rows, split_rows
from training.evaluate import confusion, performance, plot_files
from training.fitting import Corpus, Say, crossfit_val_logits, fit_model
from training.provenance import git_commit
from training.reference import drift_reference

# The split whose model the artifact ships; ``--split both`` also trains and reports the others.
SHIPPED_SPLIT = "random"
# The split that stands in for later news: its test rows' rare words are never trained on.
PROXY_SPLIT = "unseen"

Split = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass
class RunResult:
    """What a run produced; ``artifact_path`` is None on ranks other than 0."""

    artifact_path: Path | None
    metrics: dict[str, Any]
    model: TextClassifier | None = field(default=None, repr=False)
    vocab: Vocabulary | None = field(default=None, repr=False)
    labels: LabelEncoder | None = field(default=None, repr=False)
    preprocessing: PreprocessSettings | None = field(default=None, repr=False)


@dataclass
class SplitOutcome:
    """The model trained on one split, its metrics and the plots that go with them."""

    model: TextClassifier
    vocab: Vocabulary
    metrics: dict[str, Any]
    plots: dict[str, bytes]


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


def split_kinds(config: TrainConfig) -> list[str]:
    """The splits a run trains: the proxy before the shipped split (which may borrow its temperature), the
    shipped one last."""
    if config.split == "both":
        return [k for k in ("time", PROXY_SPLIT, "random") if k != SHIPPED_SPLIT] + [SHIPPED_SPLIT]
    if shifted_temperature(config) and config.split != PROXY_SPLIT:
        return [PROXY_SPLIT, config.split]
    return [config.split]


def shifted_temperature(config: TrainConfig) -> bool:
    """Whether the temperature comes from the proxy split's validation rows."""
    return config.calibrate and config.temperature_rows == "shifted"


def _run(config: TrainConfig, dist: distributed.DistContext, started: float) -> RunResult:
    say: Say = print if dist.is_main and not config.quiet else (lambda *a, **k: None)
    timing: dict[str, Any] = {}

    t0 = time.perf_counter()
    path = fetch_data(config.data, config.cache_dir) if dist.is_main else None
    if dist.enabled:
        dist.barrier()  # rank 0 downloads; the others then find the file in the cache
        path = fetch_data(config.data, config.cache_dir)
    assert path is not None
    dataset = read_dataset(path)
    keep = sample_rows(len(dataset), config.limit_rows, config.seed)
    say(
        f"data: {path} — {len(dataset)} usable rows, {dataset.dropped_empty} dropped (empty title or category); "
        f"using {len(keep)}"
    )
    timing["load_s"] = round(time.perf_counter() - t0, 3)

    t0 = time.perf_counter()
    corpus, raw_labels = load_corpus(config, dist, dataset, keep)
    timing["preprocess_s"] = round(time.perf_counter() - t0, 3)

    shipped_kind = config.split if config.split != "both" else SHIPPED_SPLIT
    # Every split is drawn before any model trains, so a split the data cannot make fails fast.
    # The rare words that draw the unseen-word split are found with the default preprocessing, so
    # every run on the same data and seed gets the same split, whatever its own preprocessing.
    default_normalizer = Normalizer(PreprocessSettings())
    split_tokens = [default_normalizer.tokens(t) for t in corpus.titles]
    splits = {
        kind: split_rows(kind, raw_labels, split_tokens, config.seed, config.fractions) for kind in split_kinds(config)
    }
    outcomes: dict[str, SplitOutcome] = {}
    for kind, split in splits.items():
        temperature, scales = None, None
        if shifted_temperature(config) and kind == shipped_kind != PROXY_SPLIT:
            temperature = outcomes[PROXY_SPLIT].metrics["calibration"]["temperature"]
            if config.linear_head:
                head = outcomes[PROXY_SPLIT].metrics["linear_head"]
                scales = (head["rnn_scale"], head["linear_scale"])
        outcomes[kind] = train_split(config, dist, kind, corpus, split, say, temperature, scales)
    shipped = outcomes[shipped_kind]
    metrics = shipped.metrics
    metrics["splits"] = {kind: split_summary(outcome.metrics) for kind, outcome in outcomes.items()}
    if PROXY_SPLIT in outcomes:
        metrics["proxy"] = proxy_summary(outcomes[PROXY_SPLIT].metrics)
    metrics["data"]["dropped_empty_titles"] = dataset.dropped_empty
    metrics["timing"] = {**timing, **metrics["timing"]}
    if not dist.is_main:
        return RunResult(None, metrics, shipped.model, shipped.vocab, corpus.labels, corpus.preprocessing)
    metrics["timing"]["total_s"] = round(time.perf_counter() - started, 3)
    artifact_path = write_artifact(
        config.artifacts_dir,
        model=shipped.model,
        vocab=shipped.vocab,
        labels=corpus.labels,
        preprocessing=corpus.preprocessing,
        metrics=metrics,
        train_config=config.to_dict(),
        extra_files=shipped.plots,
        provenance={"data_sha256": sha256_file(path), "git_commit": git_commit()},
        weights_dtype=config.weights_dtype,
    )
    for kind, summary in metrics["splits"].items():
        say(
            f"{kind} split: test weighted F1 {summary['test_f1']:.4f} (best epoch {summary['best_epoch']}); "
            f"TF-IDF baseline {summary['baseline_test_f1']:.4f}; "
            f"word+char n-gram SVM {summary['anchor_test_f1']:.4f}; unseen tokens {summary['test_oov_token_rate']:.1%}"
        )
    print(f"artifact written to {artifact_path}", flush=True)
    return RunResult(artifact_path, metrics, shipped.model, shipped.vocab, corpus.labels, corpus.preprocessing)


def load_corpus(
    config: TrainConfig, dist: distributed.DistContext, dataset: Dataset, keep: np.ndarray
) -> tuple[Corpus, list[str]]:
    """Preprocess the kept rows once; every split of the run draws from them."""
    titles = [dataset.titles[i] for i in keep]
    raw_labels = [dataset.labels[i] for i in keep]
    stopwords: tuple[str, ...] = ()
    if config.remove_stopwords:
        # Only rank 0 looks the list up (and may download it); the others receive it, so they
        # need neither NLTK data nor the network, and every rank uses the same list.
        found = load_stopwords(config.nltk_data) if dist.is_main else None
        stopwords = tuple(dist.broadcast_object(found))
    preprocessing = PreprocessSettings(
        remove_stopwords=config.remove_stopwords, stopwords=stopwords, keep_parenthesised=config.keep_parenthesised
    )
    normalizer = Normalizer(preprocessing)
    labels = LabelEncoder.fit(raw_labels)
    corpus = Corpus(
        titles=titles,
        tokens=[normalizer.tokens(t) for t in titles],
        targets=np.asarray(labels.encode(raw_labels), dtype=np.int64),
        labels=labels,
        preprocessing=preprocessing,
    )
    return corpus, raw_labels


def split_summary(metrics: dict[str, Any]) -> dict[str, Any]:
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
    if "anchor" in metrics:
        summary["anchor_test_f1"] = metrics["anchor"]["test"]["overall"]["f1"]
    summary["test_oov_token_rate"] = metrics["reference"]["oov_token_rate"]
    if "calibration" in metrics:
        summary["calibration"] = {
            "temperature": metrics["calibration"]["temperature"],
            **metrics["calibration"]["test"],
        }
    return summary


def proxy_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """What the model does on text it has not seen, beside the linear models on the same rows."""
    summary: dict[str, Any] = {
        "split": metrics["split"],
        "test_rows": metrics["data"]["test"],
        "test_oov_token_rate": metrics["reference"]["oov_token_rate"],
        "f1": metrics["test"]["overall"]["f1"],
    }
    if "calibration" in metrics:
        summary["ece"] = metrics["calibration"]["test"]["ece_after"]
        summary["temperature"] = metrics["calibration"]["temperature"]
    for key in ("anchor", "baseline"):
        if key in metrics:
            summary[key] = {"name": metrics[key]["name"], "f1": metrics[key]["test"]["overall"]["f1"]}
    return summary


def train_split(
    config: TrainConfig,
    dist: distributed.DistContext,
    kind: str,
    corpus: Corpus,
    split: Split,
    say: Say,
    temperature: float | None = None,
    scales: tuple[float, float] | None = None,
) -> SplitOutcome:
    """Fit the vocabulary and the model on one split's training rows; evaluate on its test rows.

    With ``refit``, a second model is then trained on train + validation rows for the epochs
    (and learning rates) the first run chose: the validation rows are the most recent ones on
    the time split, the closest to what comes next. The refit model has trained on the
    validation rows, so its temperature is fitted on held-out logits of another model: the
    first run's (``temperature_fit="first"``), or out-of-fold ones from models trained like the
    refit (``"crossfit"``, ``crossfit_val_logits``); ``bench/calibration_study.py`` compares them.
    A ``temperature`` fitted elsewhere (on the proxy split's validation rows) is used instead,
    and this split's own fit is reported beside it.

    With the linear head, the weights of its logits and the recurrent model's are fitted on the
    first model's validation logits (its head fitted on the training rows only), or ``scales``
    fitted elsewhere (with the borrowed temperature) are used, and the refit keeps the head's C.
    """
    train_idx, val_idx, test_idx = split
    tokens, targets, labels = corpus.tokens, corpus.targets, corpus.labels
    say(f"{kind} split: train {len(train_idx)}, val {len(val_idx)}, test {len(test_idx)}")
    first = fit_model(config, dist, corpus, train_idx, val_idx, say)
    fit_result, timing = first.result, first.timing
    metrics: dict[str, Any] = {"split": kind}
    if first.linear is not None:
        rnn_val, linear_val = first.logit_parts(val_idx, dist.device)
        own_scales = fit_scales(rnn_val, linear_val, targets[val_idx])
        rnn_scale, linear_scale = scales or own_scales
        first.model.config = replace(first.model.config, rnn_scale=rnn_scale, linear_scale=linear_scale)
        metrics["linear_head"] = {
            "C": first.linear.c,
            "val_f1": first.linear.val_f1,
            "rnn_scale": rnn_scale,
            "linear_scale": linear_scale,
            "scales_fitted_on": f"{PROXY_SPLIT} split val" if scales else "val",
            "own_val_scales": list(own_scales),
        }
    val_logits = torch.empty(0)
    crossfit = config.refit and config.temperature_fit == "crossfit"
    if config.calibrate and not crossfit:
        val_logits = first.logits(val_idx, dist.device)
    final = first
    if config.refit:
        schedule = [h["lr"] for h in fit_result.history[: fit_result.best_epoch]]
        say(f"refit on train + val ({len(train_idx) + len(val_idx)} rows) for {len(schedule)} epoch(s)")
        linear_c = first.linear.c if first.linear is not None else None
        fit_rows = np.sort(np.concatenate([train_idx, val_idx]))
        final = fit_model(config, dist, corpus, fit_rows, val_idx, say, schedule, linear_c=linear_c)
        final.model.config = replace(
            final.model.config, rnn_scale=first.model.config.rnn_scale, linear_scale=first.model.config.linear_scale
        )
        metrics["refit"] = {"rows": len(train_idx) + len(val_idx), "epochs": len(schedule)}
        timing["refit_train_s"] = final.timing["train_s"]
        if config.calibrate and crossfit:
            t0 = time.perf_counter()
            val_logits = crossfit_val_logits(config, dist, corpus, train_idx, val_idx, schedule, say)
            timing["temperature_crossfit_s"] = round(time.perf_counter() - t0, 3)
    model = final.model

    t0 = time.perf_counter()
    test_logits = final.logits(test_idx, dist.device)
    test_true = targets[test_idx]
    if final.linear is not None:
        _, linear_test = final.logit_parts(test_idx, dist.device)
        metrics["linear_head"]["test_f1"] = performance(test_true, linear_test.argmax(1).numpy(), labels.classes)[
            "overall"
        ]["f1"]
    if config.calibrate:
        metrics["calibration"] = calibration_report(val_logits, targets[val_idx], test_logits, test_true, temperature)
        if temperature is not None:
            metrics["calibration"]["fitted_on"] = f"{PROXY_SPLIT} split val"
        metrics["calibration"]["val_logits_from"] = (
            "crossfit" if crossfit else ("first_model" if config.refit else "shipped_model")
        )
        model.config = replace(model.config, temperature=metrics["calibration"]["temperature"])
    test_probs = probabilities(test_logits, model.config.temperature).numpy()
    test_pred = test_probs.argmax(axis=1)
    cm = confusion(test_true, test_pred, labels.classes)
    timing["eval_s"] = round(time.perf_counter() - t0, 3)
    metrics.update(
        test=performance(test_true, test_pred, labels.classes),
        confusion_matrix=cm,
        history=fit_result.history,
        best_epoch=fit_result.best_epoch,
        data={"rows": len(tokens), "train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
        reference=drift_reference([tokens[i] for i in test_idx], final.vocab.stoi, test_probs, labels.classes),
        timing=timing,
    )
    if not dist.is_main:
        return SplitOutcome(model, final.vocab, metrics, {})

    t0 = time.perf_counter()
    metrics["baseline"] = baseline_report(
        corpus.titles, targets, labels.classes, split, config.baseline_c, config.refit
    )
    metrics["anchor"] = anchor_report(corpus.titles, targets, labels.classes, split, config.refit)
    timing["baseline_s"] = round(time.perf_counter() - t0, 3)
    plots = (
        plot_files(fit_result.history, cm, fit_result.best_epoch, metrics.get("calibration")) if config.plots else {}
    )
    return SplitOutcome(model, final.vocab, metrics, plots)
