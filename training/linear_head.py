"""The linear head: a linear SVM on TF-IDF bags of words, word bigrams and character n-grams,
fitted on its own (a convex problem, C chosen on validation) and then stored in the model's
tables, so the network computes exactly the linear model's scores.

Its features are the model's own input (the padded token features of ``training.data``), so
what is fitted here is what the artifact computes at serving time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse
from sklearn.metrics import f1_score

from contract.model import TextClassifier, bigram_buckets
from contract.text import UNK_INDEX

LINEAR_CS = (0.1, 0.3, 1.0)


@dataclass
class Bags:
    """Occurrence counts per title and feature, and where each part's columns start.

    Columns: the ``vocab_size`` words, then ``bigrams`` bigram buckets (word part), then the
    ``grams`` n-gram buckets (character part); bucket b is column ``start + b - 1``.
    """

    counts: sparse.csr_matrix
    vocab_size: int
    bigrams: int
    grams: int

    @property
    def char_start(self) -> int:
        return self.vocab_size + self.bigrams


def count_bags(ids: np.ndarray, table: np.ndarray, vocab_size: int, grams: int, bigrams: int) -> Bags:
    """Counts of every word, word bigram and n-gram in each title.

    ``ids`` ``[N, T]`` are rows of the token table ``[types, 1 + K]`` (word index, then n-gram
    bucket ids; 0 is padding), as ``training.data.subword_table`` builds it. ``<UNK>`` is no word
    feature; an unknown word's n-grams are.
    """
    n, types = ids.shape[0], table.shape[0]
    width = vocab_size + bigrams + grams
    # Features per token type, then titles x types times types x features.
    type_words = table[:, 0]
    has_word = np.flatnonzero(type_words > UNK_INDEX)
    g_rows, g_cols = np.nonzero(table[:, 1:])
    per_type = sparse.csr_matrix(
        (
            np.ones(len(has_word) + len(g_rows)),
            (
                np.concatenate([has_word, g_rows]),
                np.concatenate([type_words[has_word], vocab_size + bigrams + table[:, 1:][g_rows, g_cols] - 1]),
            ),
        ),
        shape=(types, width),
    )
    t_rows, t_cols = np.nonzero(ids)
    titles = sparse.csr_matrix((np.ones(len(t_rows)), (t_rows, ids[t_rows, t_cols])), shape=(n, types))
    counts = (titles @ per_type).tocsr()
    if bigrams and ids.shape[1] > 1:
        pairs = bigram_buckets(torch.from_numpy(type_words[ids]), bigrams).numpy()
        b_rows, b_cols = np.nonzero(pairs)
        counts = counts + sparse.csr_matrix(
            (np.ones(len(b_rows)), (b_rows, vocab_size + pairs[b_rows, b_cols] - 1)), shape=(n, width)
        )
    counts = counts.tocsr()
    counts.sum_duplicates()
    return Bags(counts, vocab_size, bigrams, grams)


def inverse_document_frequency(counts: sparse.csr_matrix) -> np.ndarray:
    """Smoothed idf of every column over these titles (sklearn's formula); 0 for a feature none of
    them has, which then carries neither weight nor norm."""
    df = np.bincount(counts.indices, minlength=counts.shape[1])
    idf = np.log((1 + counts.shape[0]) / (1 + df)) + 1
    idf[df == 0] = 0.0
    return idf


def tfidf(bags: Bags, rows: np.ndarray, idf: np.ndarray) -> sparse.csr_matrix:
    """The linear model's input for some titles: each part's TF-IDF bag over its own L2 norm, where
    every occurrence adds its idf squared to the norm (as the model's tables do)."""
    counts = bags.counts[rows]
    char = np.zeros(len(idf), dtype=bool)
    char[bags.char_start :] = True
    scaled = counts @ sparse.diags(idf)
    norms = [counts @ np.where(part, idf**2, 0.0) for part in (~char, char)]
    inv = [1.0 / np.sqrt(np.maximum(n, 1e-12)) for n in norms]
    row_scale = sparse.diags(inv[0]) @ scaled @ sparse.diags((~char).astype(float))
    return (row_scale + sparse.diags(inv[1]) @ scaled @ sparse.diags(char.astype(float))).tocsr()


@dataclass
class LinearHead:
    """A fitted linear model: weights per column ``[classes, columns]``, biases, idf, and its C."""

    coef: np.ndarray
    intercept: np.ndarray
    idf: np.ndarray
    c: float
    val_f1: float | None = None


def _svm(c: float):  # noqa: ANN202 - sklearn's estimator
    from sklearn.svm import LinearSVC

    return LinearSVC(C=c, random_state=0)  # liblinear shuffles its coordinates: fixed, so runs repeat


def _scores(clf, x: sparse.csr_matrix) -> np.ndarray:  # noqa: ANN001
    scores = clf.decision_function(x)
    return np.stack([-scores / 2, scores / 2], axis=1) if scores.ndim == 1 else scores


def fit_linear_head(
    bags: Bags, targets: np.ndarray, fit_rows: np.ndarray, val_rows: np.ndarray | None = None, c: float | None = None
) -> LinearHead:
    """A linear SVM on ``fit_rows`` (idf from them too); C is chosen by validation F1 unless given."""
    idf = inverse_document_frequency(bags.counts[fit_rows])
    x_fit = tfidf(bags, fit_rows, idf)
    val_f1 = None
    if c is None:
        if val_rows is None:
            raise ValueError("choosing C needs validation rows")
        x_val = tfidf(bags, val_rows, idf)
        best: tuple[float, float] | None = None
        for candidate in LINEAR_CS:
            pred = _scores(_svm(candidate).fit(x_fit, targets[fit_rows]), x_val).argmax(axis=1)
            score = float(f1_score(targets[val_rows], pred, average="weighted"))
            if best is None or score > best[0]:
                best = (score, candidate)
        assert best is not None
        val_f1, c = best
    clf = _svm(c).fit(x_fit, targets[fit_rows])
    coef = np.asarray(clf.coef_, dtype=np.float64)
    intercept = np.asarray(clf.intercept_, dtype=np.float64)
    if coef.shape[0] == 1:  # binary: one score, split evenly between the two classes
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    return LinearHead(coef, intercept, idf, c, val_f1)


@torch.no_grad()
def load_linear_head_(model: TextClassifier, head: LinearHead, bags: Bags) -> None:
    """Write a fitted head into the model's tables: weight times idf, then idf squared."""
    assert model.linear_words is not None and model.linear_grams is not None and model.linear_bias is not None
    rows = np.concatenate([head.coef * head.idf, (head.idf**2)[None, :]]).T  # [columns, classes + 1]
    table = torch.from_numpy(rows).to(model.linear_words.weight)
    v, b = bags.vocab_size, bags.bigrams
    model.linear_words.weight.copy_(table[:v])
    model.linear_words.weight[: UNK_INDEX + 1] = 0.0  # <PAD> and <UNK> are no features
    model.linear_grams.weight[1:] = table[bags.char_start :]
    model.linear_grams.weight[0] = 0.0
    if model.linear_bigrams is not None:
        model.linear_bigrams.weight[1:] = table[v : v + b]
        model.linear_bigrams.weight[0] = 0.0
    model.linear_bias.copy_(torch.from_numpy(head.intercept))
