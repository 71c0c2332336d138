"""The linear baseline every run is compared with: TF-IDF word 1-2-grams + logistic regression."""

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
