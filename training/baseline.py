"""The linear models every run is compared with: word TF-IDF + logistic regression (the baseline)
and word + character n-gram TF-IDF + linear SVM (the anchor for unseen words)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import f1_score

from training.evaluate import performance

BASELINE_NAME = "tfidf_logreg"
BASELINE_CS = (1.0, 3.0, 10.0, 30.0)


def tfidf_baseline(
    train_texts: Sequence[str],
    train_y: np.ndarray,
    val_texts: Sequence[str],
    val_y: np.ndarray,
    test_texts: Sequence[str],
    c: float | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """TF-IDF word 1-2 grams + logistic regression on the raw titles; C tuned on val unless given.

    Returns test predictions and ``{"C": ..., "val_f1": ...}``.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    x_train = vectorizer.fit_transform(train_texts)
    x_val = vectorizer.transform(val_texts)
    best: tuple[float, float, Any] | None = None
    for candidate in (c,) if c is not None else BASELINE_CS:
        clf = LogisticRegression(C=candidate, max_iter=1000)
        clf.fit(x_train, train_y)
        score = f1_score(val_y, clf.predict(x_val), average="weighted")
        if best is None or score > best[0]:
            best = (float(score), candidate, clf)
    assert best is not None
    val_f1, chosen, clf = best
    return clf.predict(vectorizer.transform(test_texts)), {"C": chosen, "val_f1": val_f1}


def baseline_report(
    titles: Sequence[str],
    targets: np.ndarray,
    classes: Sequence[str],
    split: tuple[np.ndarray, np.ndarray, np.ndarray],
    c: float | None,
    refit: bool,
) -> dict[str, Any]:
    """The baseline on one split, fitted on the same rows as the model it is compared with.

    With ``refit`` the model shipped has trained on train + validation, so the baseline's C is
    chosen on validation and it is then fitted on train + validation too; its train-only score
    is kept beside.
    """
    train_idx, val_idx, test_idx = split
    test_true = targets[test_idx]

    def texts(rows: np.ndarray) -> list[str]:
        return [titles[i] for i in rows]

    pred, info = tfidf_baseline(
        texts(train_idx), targets[train_idx], texts(val_idx), targets[val_idx], texts(test_idx), c=c
    )
    if refit:
        fit_rows = np.sort(np.concatenate([train_idx, val_idx]))
        info["train_only_test_f1"] = performance(test_true, pred, classes)["overall"]["f1"]
        pred, _ = tfidf_baseline(
            texts(fit_rows), targets[fit_rows], texts(val_idx), targets[val_idx], texts(test_idx), c=info["C"]
        )
        info["fitted_on"] = "train+val"
    return {"name": BASELINE_NAME, **info, "test": performance(test_true, pred, classes)}


ANCHOR_NAME = "tfidf_word_char_linear_svm"
ANCHOR_CS = (0.1, 0.3, 1.0)


def char_linear_anchor(
    train_texts: Sequence[str],
    train_y: np.ndarray,
    val_texts: Sequence[str],
    val_y: np.ndarray,
    test_texts: Sequence[str],
    refit: bool,
) -> tuple[np.ndarray, dict[str, Any]]:
    """TF-IDF word 1-2-grams + character 2-5-grams (``char_wb``), linear SVM: the model to beat
    on unseen words, since a new word still shares character n-grams with known ones.

    C is chosen on validation; with ``refit`` the anchor is then fitted on train + validation,
    the rows the shipped model trains on. Returns test predictions and ``{"C", "val_f1"}``.
    """
    from scipy import sparse
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC

    def features(fit_texts: Sequence[str]) -> Any:
        word = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(fit_texts)
        char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True).fit(fit_texts)
        return lambda texts: sparse.hstack([word.transform(texts), char.transform(texts)]).tocsr()

    encode = features(train_texts)
    x_train, x_val = encode(train_texts), encode(val_texts)
    best: tuple[float, float] | None = None
    for c in ANCHOR_CS:
        score = f1_score(val_y, LinearSVC(C=c).fit(x_train, train_y).predict(x_val), average="weighted")
        if best is None or score > best[0]:
            best = (float(score), c)
    assert best is not None
    val_f1, chosen = best
    if refit:
        train_texts = [*train_texts, *val_texts]
        train_y = np.concatenate([train_y, val_y])
        encode = features(train_texts)
        x_train = encode(train_texts)
    clf = LinearSVC(C=chosen).fit(x_train, train_y)
    return clf.predict(encode(test_texts)), {"C": chosen, "val_f1": val_f1}


def anchor_report(
    titles: Sequence[str],
    targets: np.ndarray,
    classes: Sequence[str],
    split: tuple[np.ndarray, np.ndarray, np.ndarray],
    refit: bool,
) -> dict[str, Any]:
    """The character n-gram anchor on one split, fitted on the same rows as the model."""
    train_idx, val_idx, test_idx = split

    def texts(rows: np.ndarray) -> list[str]:
        return [titles[i] for i in rows]

    pred, info = char_linear_anchor(
        texts(train_idx), targets[train_idx], texts(val_idx), targets[val_idx], texts(test_idx), refit
    )
    fitted_on = "train+val" if refit else "train"
    return {"name": ANCHOR_NAME, **info, "fitted_on": fitted_on, "test": performance(targets[test_idx], pred, classes)}
