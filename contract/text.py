"""The text half of the artifact contract: normalisation, vocabulary and labels.

Pure Python (no torch, no NLTK at import time) so the service can load it cheaply and
serving never needs NLTK data: the stopword list travels inside the artifact.
"""

from __future__ import annotations

import os
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PAD_TOKEN = "<PAD>"
UNK_TOKEN = "<UNK>"
PAD_INDEX = 0
UNK_INDEX = 1

_PARENTHESISED = re.compile(r"\([^)]*\)")
_WORD = re.compile(r"[a-z0-9]+")


class StopwordsUnavailableError(RuntimeError):
    """NLTK's stopword corpus could not be found or downloaded."""


@dataclass(frozen=True)
class PreprocessSettings:
    """How raw titles become token strings; saved in the artifact verbatim.

    ``stopwords`` is the exact list used at training time (empty when removal is off), so a
    server reproduces training-time preprocessing without NLTK.
    """

    lowercase: bool = True
    # None: remove exactly when a stopword list is given. One rule for every caller, so the
    # contract's default agrees with training's (stopwords kept unless a list is loaded).
    remove_stopwords: bool | None = None
    stopwords: tuple[str, ...] = field(default_factory=tuple)
    # The lesson drops parenthesised asides; keeping them keeps source tags such as "(SPACE.com)"
    # or "(AFP)", which say something about the topic. False in artifacts written before the field.
    keep_parenthesised: bool = False

    def __post_init__(self) -> None:
        if self.remove_stopwords is None:
            object.__setattr__(self, "remove_stopwords", bool(self.stopwords))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stopwords"] = list(self.stopwords)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSettings:
        return cls(
            lowercase=bool(data["lowercase"]),
            remove_stopwords=bool(data["remove_stopwords"]),
            stopwords=tuple(str(w) for w in data["stopwords"]),
            keep_parenthesised=bool(data.get("keep_parenthesised", False)),
        )


class Normalizer:
    """Compiled form of :class:`PreprocessSettings`, built once per process.

    The lesson removes stopwords with one regex alternation of ~180 words before splitting
    punctuation. Here the text is split into ``[a-z0-9]+`` tokens first and stopwords are
    dropped by set membership, which is an order of magnitude faster and gives the same
    output except where the lesson's ``\\b`` word boundaries disagree with our tokens:
    a stopword glued to ``_`` or to a non-ASCII letter or digit (``the_best``, ``theé``,
    ``the²``) survives the regex but is removed here; and a parenthesised aside with text
    glued to both sides (``x(y)nyse``) leaves two tokens here (``x nyse``) where the lesson's
    empty replacement merges them (``xnyse``). On the 10K sample the outputs are identical
    (tested against a copy of the lesson's regex in tests/contract/test_text.py).
    """

    def __init__(self, settings: PreprocessSettings) -> None:
        self.settings = settings
        # Stopwords with apostrophes ("don't") reach us as separate tokens ("don", "t");
        # we only ever compare whole [a-z0-9]+ tokens, so keep the pieces that are words.
        words: set[str] = set()
        if settings.remove_stopwords:
            for word in settings.stopwords:
                words.update(_WORD.findall(word.lower()))
        self._stopwords = frozenset(words)

    def tokens(self, text: str) -> list[str]:
        """Token list for one raw title (possibly empty)."""
        if self.settings.lowercase:
            text = text.lower()
        if not self.settings.keep_parenthesised:
            text = _PARENTHESISED.sub(" ", text)
        # Tokens are the ASCII alphanumeric runs; with lowercase off, upper case letters
        # still count as word characters but are kept as they are.
        found = _WORD.findall(text) if self.settings.lowercase else _ASCII_WORD.findall(text)
        if self._stopwords:
            stop = self._stopwords
            return [t for t in found if t.lower() not in stop]
        return found

    def normalize(self, text: str) -> str:
        """The lesson's preprocessed string: tokens joined by single spaces."""
        return " ".join(self.tokens(text))


_ASCII_WORD = re.compile(r"[A-Za-z0-9]+")


def load_stopwords(nltk_data: str | os.PathLike[str] | None = None, download: bool = True) -> tuple[str, ...]:
    """NLTK's English stopwords, from ``nltk_data``/``NLTK_DATA`` or a download.

    Raises :class:`StopwordsUnavailableError` with the fix when neither works, instead of
    NLTK's long LookupError.
    """
    try:
        import nltk
        from nltk.corpus import stopwords as corpus
    except ImportError as exc:  # pragma: no cover - nltk is a training dependency
        raise StopwordsUnavailableError(
            "stopword removal needs NLTK: pip install nltk (or run with --no-stopwords)"
        ) from exc
    if nltk_data is not None:
        path = os.fspath(nltk_data)
        if not os.path.isdir(path):
            raise StopwordsUnavailableError(f"NLTK data folder not found: {path}")
        if path not in nltk.data.path:
            nltk.data.path.insert(0, path)
    try:
        return tuple(corpus.words("english"))
    except LookupError:
        pass
    if download:
        try:
            if nltk.download("stopwords", quiet=True, raise_on_error=True):
                return tuple(corpus.words("english"))
        except Exception:  # noqa: BLE001 - any network failure means "offline"
            pass
    raise StopwordsUnavailableError(
        "NLTK's English stopword corpus is not installed and could not be downloaded. "
        "Fix: set NLTK_DATA (or --nltk-data) to a folder holding corpora/stopwords/english, "
        "or run `python -m nltk.downloader stopwords` while online, or pass --no-stopwords."
    )


class Vocabulary:
    """Word → index map with ``<PAD>``=0 and ``<UNK>``=1, fitted on training text only."""

    def __init__(self, tokens: Sequence[str]) -> None:
        if list(tokens[:2]) != [PAD_TOKEN, UNK_TOKEN]:
            raise ValueError("vocabulary must start with <PAD>, <UNK>")
        if len(set(tokens)) != len(tokens):
            raise ValueError("vocabulary has duplicate tokens")
        self.itos: list[str] = list(tokens)
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}

    @classmethod
    def fit(cls, token_lists: Iterable[Sequence[str]], max_size: int | None = None, min_freq: int = 1) -> Vocabulary:
        """Most frequent words first (ties broken alphabetically, so fitting is deterministic)."""
        counts: Counter[str] = Counter()
        for tokens in token_lists:
            counts.update(tokens)
        words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max(0, max_size - 2)]
        return cls([PAD_TOKEN, UNK_TOKEN, *words])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """Indices for tokens; an empty input becomes ``[UNK]`` so every text has length ≥ 1."""
        if not tokens:
            return [UNK_INDEX]
        get = self.stoi.get
        return [get(t, UNK_INDEX) for t in tokens]

    def decode(self, indices: Iterable[int]) -> list[str]:
        return [self.itos[i] for i in indices]

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": self.itos}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocabulary:
        return cls([str(t) for t in data["tokens"]])


class LabelEncoder:
    """Category name ↔ class index, in sorted order so it is independent of row order."""

    def __init__(self, classes: Sequence[str]) -> None:
        if len(set(classes)) != len(classes):
            raise ValueError("duplicate class names")
        self.classes: list[str] = list(classes)
        self.index: dict[str, int] = {c: i for i, c in enumerate(self.classes)}

    @classmethod
    def fit(cls, labels: Iterable[str]) -> LabelEncoder:
        return cls(sorted(set(labels)))

    def __len__(self) -> int:
        return len(self.classes)

    def encode(self, labels: Iterable[str]) -> list[int]:
        try:
            return [self.index[label] for label in labels]
        except KeyError as exc:
            raise ValueError(f"unknown label {exc.args[0]!r}; known: {self.classes}") from None

    def decode(self, indices: Iterable[int]) -> list[str]:
        return [self.classes[i] for i in indices]

    def to_dict(self) -> dict[str, Any]:
        return {"classes": self.classes}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelEncoder:
        return cls([str(c) for c in data["classes"]])


def char_ngrams(token: str, min_n: int, max_n: int) -> list[str]:
    """fastText-style character n-grams of ``<token>`` (the brackets mark word start and end)."""
    word = f"<{token}>"
    return [word[i : i + n] for n in range(min_n, max_n + 1) for i in range(len(word) - n + 1)]


class SubwordHasher:
    """Token → bucket ids of its character n-grams, so a word never seen in training still
    gets a vector built from pieces it shares with known words ("microsoft's" ≈ "microsoft").

    Ids are ``1..buckets`` (0 is padding). The hash is CRC-32, fixed by the standard, so every
    process and machine maps an n-gram to the same bucket; the three numbers below, stored in
    the model config, are all a server needs to rebuild the mapping. At most ``max_per_token``
    n-grams are kept (shorter n first), which bounds the cost of a pathological long token.
    """

    def __init__(self, buckets: int, min_n: int = 3, max_n: int = 5, max_per_token: int = 32) -> None:
        if buckets < 1 or not 1 <= min_n <= max_n or max_per_token < 1:
            raise ValueError(f"invalid subword settings: buckets {buckets}, n {min_n}..{max_n}, cap {max_per_token}")
        self.buckets = buckets
        self.min_n = min_n
        self.max_n = max_n
        self.max_per_token = max_per_token
        self._cache: dict[str, tuple[int, ...]] = {}

    def __call__(self, token: str) -> tuple[int, ...]:
        found = self._cache.get(token)
        if found is None:
            grams = char_ngrams(token, self.min_n, self.max_n)[: self.max_per_token]
            found = tuple(zlib.crc32(g.encode("utf-8")) % self.buckets + 1 for g in grams)
            if len(self._cache) >= 200_000:  # bounded: a server sees unbounded distinct tokens
                self._cache.clear()
            self._cache[token] = found
        return found


class TextEncoder:
    """Raw title → token features, exactly as at training time. Shared by trainer and server.

    Without subwords a text becomes a list of word indices. With a :class:`SubwordHasher`
    every token becomes a tuple ``(word index, n-gram bucket ids...)``; ``len()`` of the list
    is still the number of tokens, and :func:`contract.model.pad_batch` pads either form.
    With ``known_word_grams=False`` a word in the vocabulary is just ``(word index,)``: for a
    model whose vocabulary vectors already hold their n-grams
    (:meth:`contract.model.TextClassifier.fold_word_ngrams`), only unknown words need theirs.
    """

    def __init__(
        self,
        settings: PreprocessSettings,
        vocab: Vocabulary,
        subwords: SubwordHasher | None = None,
        known_word_grams: bool = True,
    ) -> None:
        self.normalizer = Normalizer(settings)
        self.vocab = vocab
        self.subwords = subwords
        self.known_word_grams = known_word_grams

    def encode(self, text: str) -> tuple[list[Any], bool]:
        """Token features and whether the text had no tokens left after preprocessing."""
        tokens = self.normalizer.tokens(text)
        ids = self.vocab.encode(tokens)
        if self.subwords is None:
            return ids, not tokens
        if not tokens:
            return [(ids[0],)], True
        hasher = self.subwords
        if self.known_word_grams:
            return [(i, *hasher(t)) for i, t in zip(ids, tokens, strict=True)], False
        if UNK_INDEX not in ids:  # the common case: every word known, one C-level pass
            return list(zip(ids)), False
        return [(i,) if i != UNK_INDEX else (i, *hasher(t)) for i, t in zip(ids, tokens, strict=True)], False

    def encode_many(self, texts: Iterable[str]) -> list[list[Any]]:
        return [self.encode(t)[0] for t in texts]
