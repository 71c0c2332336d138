"""Initial embedding weights: small random vectors, or LSA vectors shared with the n-grams."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from contract.model import TextClassifier
from contract.text import PAD_INDEX, SubwordHasher, Vocabulary


def init_normal_(model: TextClassifier, std: float) -> None:
    """Small random embeddings (torch's N(0, 1) saturates the GRU gates early on)."""
    with torch.no_grad():
        model.embedding.weight.normal_(0.0, std)
        model.embedding.weight[PAD_INDEX].zero_()
        if model.subword_embedding is not None:
            model.subword_embedding.weight.normal_(0.0, std)
            model.subword_embedding.weight[0].zero_()


def lsa_embeddings(
    token_lists: Sequence[Sequence[str]], vocab: Vocabulary, dim: int, std: float, seed: int
) -> torch.Tensor:
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


def init_lsa_(
    model: TextClassifier,
    token_lists: Sequence[Sequence[str]],
    vocab: Vocabulary,
    std: float,
    seed: int,
    share_with_subwords: bool,
) -> None:
    """Overwrite the word (and, when shared, n-gram) embeddings with LSA vectors of ``token_lists``."""
    vectors = lsa_embeddings(token_lists, vocab, model.config.embedding_dim, std, seed)
    hasher = model.config.subword_hasher(model.config.subword_buckets)  # the embeddings' own buckets
    subword_vectors = None
    if hasher is not None and share_with_subwords and model.subword_embedding is not None:
        vectors, subword_vectors = split_subword_vectors(vectors, vocab, hasher)
    with torch.no_grad():
        model.embedding.weight.copy_(vectors)
        if subword_vectors is not None and model.subword_embedding is not None:
            model.subword_embedding.weight.copy_(subword_vectors)
