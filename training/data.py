"""Read and validate the CSV, split it stratified, encode it and build length-bucketed batches."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.text import PAD_INDEX, UNK_INDEX, SubwordHasher, Vocabulary

REQUIRED_COLUMNS = ("title", "category")
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "headline-classifier"


class DataError(Exception):
    """The training data is missing, unreadable or unusable; the message says where and why."""


@dataclass
class Dataset:
    """Titles and categories of the usable rows, in file order."""

    titles: list[str]
    labels: list[str]
    dropped_empty: int
    path: Path

    def __len__(self) -> int:
        return len(self.titles)


def is_url(location: str | os.PathLike[str]) -> bool:
    return str(location).startswith(("http://", "https://"))


def fetch_data(location: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Local path for ``location``: a path as is, a URL downloaded once into ``cache_dir``."""
    if not is_url(location):
        return Path(location)
    url = str(location)
    cache = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    name = url.rstrip("/").rsplit("/", 1)[-1] or "data.csv"
    target = cache / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part-{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(tmp, "wb") as out:  # noqa: S310
            while chunk := response.read(1 << 20):
                out.write(chunk)
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"cannot download {url}: {reason}. Are you offline? Pass --data with a local CSV path instead."
        ) from exc
    return target


def _decode(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        bad = raw[exc.start : exc.end].hex(" ")
        raise DataError(f"{path}: line {line}, column {column}: bytes {bad} are not valid UTF-8") from None


def read_dataset(path: str | os.PathLike[str]) -> Dataset:
    """Read a CSV with at least ``title`` and ``category`` columns (others are ignored).

    Rows whose title or category is empty are dropped and counted, never silently.
    Raises :class:`DataError` naming the file (and line/column where there is one).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    text = _decode(raw, path)
    if not text.strip():
        raise DataError(f"{path}: file is empty (expected a header with columns title,category)")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(reader)]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise DataError(
                f"{path}: line 1: missing column(s) {', '.join(missing)} in header {header} "
                f"(need {', '.join(REQUIRED_COLUMNS)})"
            )
        ti, ci = header.index("title"), header.index("category")
        titles: list[str] = []
        labels: list[str] = []
        dropped = 0
        for row in reader:
            if not row:  # a blank line is not a row
                continue
            title = row[ti].strip() if ti < len(row) else ""
            label = row[ci].strip() if ci < len(row) else ""
            if not title or not label:
                dropped += 1
                continue
            titles.append(title)
            labels.append(label)
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from None
    if not titles:
        raise DataError(f"{path}: no usable rows (every row has an empty title or category)")
    if len(set(labels)) < 2:
        raise DataError(f"{path}: need at least two categories, found {sorted(set(labels))}")
    return Dataset(titles=titles, labels=labels, dropped_empty=dropped, path=path)


def sample_rows(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random sample of ``limit`` of ``n`` rows (all when None)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def stratified_split(
    labels: Sequence[str], seed: int, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train/val/test row indices with every class split in the same proportions.

    Deterministic for a given ``seed``; each class must be large enough to put at least one
    row into every split, otherwise :class:`DataError` names the class and its count.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) <= 0:
        raise ValueError(f"fractions must be three positive shares summing to 1, got {fractions}")
    labels_arr = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    counts = Counter(labels_arr.tolist())
    for label in sorted(counts):
        rows = np.flatnonzero(labels_arr == label)
        n = len(rows)
        n_val = int(round(n * fractions[1]))
        n_test = int(round(n * fractions[2]))
        n_train = n - n_val - n_test
        if min(n_train, n_val, n_test) < 1:
            raise DataError(
                f"category {label!r} has only {n} row(s), too few to stratify into "
                f"train/val/test = {fractions}; add rows or drop the category"
            )
        rows = rng.permutation(rows)
        parts[0].append(rows[:n_train])
        parts[1].append(rows[n_train : n_train + n_val])
        parts[2].append(rows[n_train + n_val :])
    train, val, test = (np.sort(np.concatenate(p)) for p in parts)
    return train, val, test


def time_split(
    labels: Sequence[str], fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train/val/test as consecutive blocks in file order: train on the past, test on the future.

    A random split of a few weeks of news puts the same stories in train and test, which
    overstates what the model does next month. Here the file order is taken as time order:
    the first ``fractions[0]`` of rows train, the next block validates, the last block tests.
    Every class must appear in the training block, or :class:`DataError` names it.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) <= 0:
        raise ValueError(f"fractions must be three positive shares summing to 1, got {fractions}")
    n = len(labels)
    n_val = int(round(n * fractions[1]))
    n_test = int(round(n * fractions[2]))
    n_train = n - n_val - n_test
    if min(n_train, n_val, n_test) < 1:
        raise DataError(f"{n} row(s) are too few for a time split of train/val/test = {fractions}")
    rows = np.arange(n)
    train = rows[:n_train]
    missing = sorted(set(labels) - {labels[i] for i in train})
    if missing:
        raise DataError(
            f"category {missing[0]!r} never occurs in the first {n_train} rows (the time split's training part); "
            "use --split random or add earlier rows of it"
        )
    return train, rows[n_train : n_train + n_val], rows[n_train + n_val :]


def stratified_halves(targets: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``0..len(targets)-1`` dealt into two halves with every class split evenly.

    Used to cross-fit the temperature: each half is predicted by a model trained on the other.
    """
    rng = np.random.default_rng(seed)
    halves: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    for label in np.unique(targets):
        rows = rng.permutation(np.flatnonzero(targets == label))
        halves[0].append(rows[0::2])
        halves[1].append(rows[1::2])
    first, second = (np.sort(np.concatenate(h)) if h else np.empty(0, dtype=np.int64) for h in halves)
    return first, second


def subword_table(
    vocab: Vocabulary, token_lists: Sequence[Sequence[str]], hasher: SubwordHasher
) -> tuple[Vocabulary, np.ndarray]:
    """An extended vocabulary (the real one, then every other token type in ``token_lists``)
    and its feature table ``[types, 1 + K]``: word index (``<UNK>`` for types outside
    ``vocab``) then the type's n-gram bucket ids, 0-padded.

    Encoding texts with the extended vocabulary and looking rows up in the table gives, in
    one gather per batch, exactly what :class:`TextEncoder` gives a server for the same text,
    without storing n-grams per position.
    """
    unseen = sorted({t for tokens in token_lists for t in tokens if t not in vocab.stoi})
    extended = Vocabulary([*vocab.itos, *unseen])
    grams = [() if i < 2 else hasher(token) for i, token in enumerate(extended.itos)]
    table = np.zeros((len(extended), 1 + max(1, max(len(g) for g in grams))), dtype=np.int64)
    table[: len(vocab), 0] = np.arange(len(vocab))
    table[len(vocab) :, 0] = UNK_INDEX
    for i, g in enumerate(grams):
        table[i, 1 : 1 + len(g)] = g
    return extended, table


def encode_matrix(token_lists: Sequence[Sequence[str]], vocab: Vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """Every text once into a right-padded ``int64`` matrix ``[N, T]`` plus lengths (≥ 1)."""
    encoded = [vocab.encode(tokens) for tokens in token_lists]
    lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
    width = int(lengths.max()) if len(encoded) else 1
    ids = np.full((len(encoded), width), PAD_INDEX, dtype=np.int64)
    mask = np.arange(width)[None, :] < lengths[:, None]
    ids[mask] = np.fromiter((i for e in encoded for i in e), dtype=np.int64, count=int(lengths.sum()))
    return ids, lengths


class BucketBatcher:
    """Index batches of similar length, reshuffled every epoch.

    Rows are sorted by length with ties in random order, cut into batches, and the batch order
    shuffled, so padding stays small while each epoch sees different batches in a different
    order. With ``world_size`` > 1 every rank takes its own shard of the same batch list and
    all ranks get the same number of batches (a rank with fewer steps would hang DDP).
    """

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[np.ndarray]:
        n = len(self.lengths)
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            order = rng.permutation(n)
            order = order[np.argsort(self.lengths[order], kind="stable")]
        else:
            rng = None
            order = np.argsort(self.lengths, kind="stable")
        batches = [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
        if rng is not None:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.world_size > 1:
            per_rank = len(batches) // self.world_size
            if per_rank == 0:
                raise DataError(
                    f"{n} training rows make {len(batches)} batch(es) of {self.batch_size}, "
                    f"fewer than the {self.world_size} processes; lower --batch-size"
                )
            batches = batches[self.rank :: self.world_size][:per_rank]
        return batches

    def __len__(self) -> int:
        n_batches = -(-len(self.lengths) // self.batch_size)
        return n_batches // self.world_size if self.world_size > 1 else n_batches

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.batches())


def slice_batch(ids: np.ndarray, lengths: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the padded matrix, trimmed to the longest row in the batch."""
    lens = lengths[rows]
    return ids[rows, : int(lens.max())], lens


# A word found in at most this many titles of the sample ties them to one part of the split.
RARE_WORD_TITLES = 2


def rare_word_groups(token_lists: Sequence[Sequence[str]], max_titles: int = RARE_WORD_TITLES) -> list[np.ndarray]:
    """Rows joined into groups by the rare words they share (union-find).

    A word found in at most ``max_titles`` titles links them; a row without such a link is a
    group of its own.
    """
    titles_with: dict[str, list[int]] = {}
    for row, tokens in enumerate(token_lists):
        for word in set(tokens):
            titles_with.setdefault(word, []).append(row)
    parent = list(range(len(token_lists)))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for rows in titles_with.values():
        if len(rows) <= max_titles:
            for other in rows[1:]:
                parent[root(other)] = root(rows[0])
    groups: dict[int, list[int]] = {}
    for row in range(len(token_lists)):
        groups.setdefault(root(row), []).append(row)
    return [np.asarray(rows, dtype=np.int64) for rows in groups.values()]


def unseen_word_split(
    token_lists: Sequence[Sequence[str]],
    labels: Sequence[str],
    seed: int,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    max_titles: int = RARE_WORD_TITLES,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A time block held out with every title that shares a rare word with it.

    News from another month brings words no training title has, and a random split hides
    that: the sample's other titles about a story land in training. Here the test part is a
    block of consecutive rows in file order (``seed`` 1 the latest block, 2 the one before,
    and so on, wrapping round), validation the block before it (after it, for the first
    block), and every title linked to a block by a word found in at most ``max_titles``
    titles (:func:`rare_word_groups`) joins that block. So the test and validation rows' rare
    words are never trained on, and both parts are shifted alike: the temperature fitted on
    validation meets the same shift on test.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) <= 0:
        raise ValueError(f"fractions must be three positive shares summing to 1, got {fractions}")
    n = len(token_lists)
    n_test, n_val = int(round(n * fractions[2])), int(round(n * fractions[1]))
    if min(n_test, n_val, n - n_test - n_val) < 1:
        raise DataError(f"{n} row(s) are too few for an unseen-word split of train/val/test = {fractions}")
    block = (seed - 1) % (n // n_test)
    test_start = n - (block + 1) * n_test
    val_start = test_start - n_val if test_start >= n_val else test_start + n_test
    part = np.zeros(n, dtype=np.int64)  # 0 train, 1 val, 2 test
    part[val_start : val_start + n_val] = 1
    part[test_start : test_start + n_test] = 2
    for group in rare_word_groups(token_lists, max_titles):
        part[group] = part[group].max()
    train, val, test = (np.flatnonzero(part == k) for k in range(3))
    missing = sorted(set(labels) - {labels[int(i)] for i in train})
    if missing:
        raise DataError(f"category {missing[0]!r} has no row in the unseen-word split's training part; add rows of it")
    return train, val, test


def split_rows(
    kind: str,
    labels: Sequence[str],
    token_lists: Sequence[Sequence[str]],
    seed: int,
    fractions: tuple[float, float, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of train/val/test for a split ``kind``: "random", "time" or "unseen"."""
    if kind == "time":
        return time_split(labels, fractions)
    if kind == "random":
        return stratified_split(labels, seed, fractions)
    if kind == "unseen":
        return unseen_word_split(token_lists, labels, seed, fractions)
    raise ValueError(f"unknown split kind {kind!r}")
