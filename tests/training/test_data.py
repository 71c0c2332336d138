"""Data tier: CSV validation errors, empty-row accounting, stratified split, encoding and batches."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from contract.text import PAD_INDEX, UNK_INDEX, Vocabulary
from training.data import (
    BucketBatcher,
    DataError,
    encode_matrix,
    fetch_data,
    rare_word_groups,
    read_dataset,
    sample_rows,
    stratified_halves,
    stratified_split,
    subword_table,
    time_split,
    unseen_word_split,
)


def write(tmp_path, content: str | bytes, name: str = "data.csv"):
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def test_reads_titles_and_labels_ignoring_other_columns(tmp_path):
    path = write(tmp_path, 'id,category,title\n1,Sports,Team wins\n2,World,"Talks, again"\n')
    data = read_dataset(path)
    assert data.titles == ["Team wins", "Talks, again"]
    assert data.labels == ["Sports", "World"]
    assert data.dropped_empty == 0


def test_empty_titles_and_categories_are_dropped_and_counted(tmp_path):
    path = write(tmp_path, "title,category\nA,Sports\n,World\n   ,World\nB,\nC,World\n\n")
    data = read_dataset(path)
    assert data.titles == ["A", "C"]
    assert data.dropped_empty == 3


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        read_dataset(tmp_path / "nope.csv")


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path, content):
    with pytest.raises(DataError, match=r"data\.csv: file is empty"):
        read_dataset(write(tmp_path, content))


def test_missing_columns_are_named(tmp_path):
    path = write(tmp_path, "headline,topic,category\nA,B,Sports\n")
    with pytest.raises(DataError, match=r"data\.csv: line 1: missing column\(s\) title"):
        read_dataset(path)


def test_undecodable_bytes_report_line_and_column(tmp_path):
    path = write(tmp_path, b"title,category\nGood,Sports\nBad \xff\xfe here,World\n")
    with pytest.raises(DataError, match=r"data\.csv: line 3, column 5: bytes ff"):
        read_dataset(path)


def test_utf8_bom_is_accepted(tmp_path):
    assert read_dataset(write(tmp_path, "\ufefftitle,category\nA,X\nB,Y\n")).labels == ["X", "Y"]


def test_single_category(tmp_path):
    with pytest.raises(DataError, match=r"at least two categories, found \['Sports'\]"):
        read_dataset(write(tmp_path, "title,category\nA,Sports\nB,Sports\n"))


def test_only_empty_rows(tmp_path):
    with pytest.raises(DataError, match="no usable rows"):
        read_dataset(write(tmp_path, "title,category\n,Sports\nB,\n"))


def test_category_too_small_to_stratify_is_named_with_count():
    labels = ["big"] * 50 + ["tiny"] * 2
    with pytest.raises(DataError, match=r"category 'tiny' has only 2 row\(s\)"):
        stratified_split(labels, seed=0)


def test_split_is_stratified_disjoint_complete_and_deterministic():
    labels = ["a"] * 700 + ["b"] * 200 + ["c"] * 100
    train, val, test = stratified_split(labels, seed=7)
    assert len(train) + len(val) + len(test) == 1000
    assert len(np.intersect1d(train, val)) == len(np.intersect1d(train, test)) == len(np.intersect1d(val, test)) == 0
    for part, share in ((train, 0.7), (val, 0.15), (test, 0.15)):
        counts = Counter(labels[i] for i in part)
        assert counts == {"a": round(700 * share), "b": round(200 * share), "c": round(100 * share)}
    again = stratified_split(labels, seed=7)
    assert all(np.array_equal(x, y) for x, y in zip((train, val, test), again, strict=True))
    other = stratified_split(labels, seed=8)
    assert not np.array_equal(train, other[0])


def test_stratified_halves_deal_every_class_evenly_into_two_disjoint_halves():
    targets = np.array([0] * 41 + [1] * 20 + [2] * 9)
    first, second = stratified_halves(targets, seed=5)
    assert np.array_equal(np.sort(np.concatenate([first, second])), np.arange(70))
    for label, n in ((0, 41), (1, 20), (2, 9)):
        counts = (int((targets[first] == label).sum()), int((targets[second] == label).sum()))
        assert sorted(counts) == [n // 2, n - n // 2]
    assert all(np.array_equal(x, y) for x, y in zip((first, second), stratified_halves(targets, seed=5), strict=True))
    assert not np.array_equal(first, stratified_halves(targets, seed=6)[0])


def test_sample_rows_is_seeded_and_spans_the_file():
    rows = sample_rows(1000, 100, seed=1)
    assert len(rows) == 100 and np.array_equal(rows, sample_rows(1000, 100, seed=1))
    assert rows.max() > 500  # not just the head of a file sorted by category
    assert np.array_equal(sample_rows(10, None, seed=1), np.arange(10))


def test_encode_matrix_pads_and_maps_unknowns():
    vocab = Vocabulary.fit([["a", "b"], ["a"]])
    ids, lengths = encode_matrix([["a", "b", "zzz"], [], ["b"]], vocab)
    assert ids.dtype == np.int64 and ids.shape == (3, 3)
    assert lengths.tolist() == [3, 1, 1]
    assert ids[0].tolist() == [vocab.stoi["a"], vocab.stoi["b"], UNK_INDEX]
    assert ids[1].tolist() == [UNK_INDEX, PAD_INDEX, PAD_INDEX]


def test_bucket_batches_cover_every_row_once_with_similar_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 30, size=1000)
    batcher = BucketBatcher(lengths, batch_size=64, seed=3)
    batcher.set_epoch(1)
    first = batcher.batches()
    assert np.array_equal(np.sort(np.concatenate(first)), np.arange(1000))
    assert max(np.ptp(lengths[b]) for b in first) <= 3  # ~34 rows per length: a batch spans ≤ 3
    batcher.set_epoch(2)
    second = batcher.batches()
    assert [b.tolist() for b in first] != [b.tolist() for b in second]  # reshuffled each epoch
    batcher.set_epoch(1)
    assert [b.tolist() for b in batcher.batches()] == [b.tolist() for b in first]  # seeded


def test_bucket_shards_have_equal_step_counts_and_do_not_overlap():
    lengths = np.arange(1, 1001) % 17 + 1
    shards = [BucketBatcher(lengths, 64, seed=0, rank=r, world_size=3).batches() for r in range(3)]
    assert [len(s) for s in shards] == [5, 5, 5]  # 16 batches, 16 // 3 per rank
    rows = np.concatenate([np.concatenate(s) for s in shards])
    assert len(np.unique(rows)) == len(rows)


def test_too_few_batches_for_the_ranks_is_a_data_error():
    with pytest.raises(DataError, match="fewer than the 4 processes"):
        BucketBatcher(np.ones(10, dtype=np.int64), 8, seed=0, rank=0, world_size=4).batches()


def test_local_path_is_returned_unchanged(tmp_path):
    assert fetch_data(tmp_path / "x.csv", cache_dir=tmp_path) == tmp_path / "x.csv"


def test_url_is_downloaded_once_then_read_from_the_cache(tmp_path, monkeypatch):
    import io
    import urllib.request

    calls = []

    def fake_urlopen(url, timeout):
        calls.append(url)
        return io.BytesIO(b"title,category\nA,X\nB,Y\n")

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    url = "https://example.invalid/news.csv"
    first = fetch_data(url, cache_dir=tmp_path)
    second = fetch_data(url, cache_dir=tmp_path)
    assert first == second and first.parent == tmp_path and first.name.endswith("news.csv")
    assert calls == [url]
    assert read_dataset(first).titles == ["A", "B"]
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no partial file left


def test_failed_download_is_a_clear_data_error(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match=r"cannot download https://example\.invalid/news\.csv: .*--data"):
        fetch_data("https://example.invalid/news.csv", cache_dir=tmp_path)


def test_time_split_keeps_file_order_past_to_future():
    labels = ["a", "b", "c", "d"] * 250
    train, val, test = time_split(labels)
    assert np.array_equal(train, np.arange(700))
    assert np.array_equal(val, np.arange(700, 850)) and np.array_equal(test, np.arange(850, 1000))


def test_time_split_names_a_category_missing_from_the_past():
    labels = ["a", "b"] * 400 + ["late"] * 200
    with pytest.raises(DataError, match=r"category 'late' never occurs in the first 700 rows"):
        time_split(labels)


def _common_words(n: int) -> list[list[str]]:
    """Titles of n common words each (every word in many titles), one per row."""
    return [["stocks", "oil", "team", "chip"][i % 4 : i % 4 + 1] * 2 for i in range(n)]


def test_rare_word_groups_join_titles_sharing_a_word_found_in_few_titles():
    tokens = [["oil", "zorblax"], ["oil"], ["zorblax", "quux"], ["quux", "oil"], ["oil"], ["oil"]]
    groups = sorted(sorted(g.tolist()) for g in rare_word_groups(tokens, max_titles=2))
    # zorblax links 0-2 and quux links 2-3; oil is in five titles, so it links nothing.
    assert groups == [[0, 2, 3], [1], [4], [5]]


def test_unseen_split_holds_out_a_time_block_with_its_rare_words():
    tokens = _common_words(1000)
    tokens[100].append("zorblax")  # an early title sharing a rare word with the latest block
    tokens[950].append("zorblax")
    tokens[200].append("quux")  # with the validation block
    tokens[800].append("quux")
    labels = ["a", "b", "c", "d"] * 250
    train, val, test = unseen_word_split(tokens, labels, seed=1)
    assert sorted([*train, *val, *test]) == list(range(1000))
    assert set(range(850, 1000)) | {100} == set(test.tolist())  # seed 1: the latest block
    assert set(range(700, 850)) | {200} == set(val.tolist())
    trained = {w for i in train for w in tokens[i]}
    assert "zorblax" not in trained and "quux" not in trained
    again = unseen_word_split(tokens, labels, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip((train, val, test), again, strict=True))
    _, val2, test2 = unseen_word_split(tokens, labels, seed=2)  # the block before, validated on the one before it
    assert set(range(700, 850)) <= set(test2.tolist()) and set(range(550, 700)) <= set(val2.tolist())


def test_unseen_split_names_a_category_missing_from_training():
    labels = ["a", "b"] * 425 + ["late"] * 150
    with pytest.raises(DataError, match=r"category 'late' has no row in the unseen-word split's training part"):
        unseen_word_split(_common_words(1000), labels, seed=1)


def test_subword_table_gives_the_servers_encoding():
    """Training's table lookup and the service's TextEncoder produce the same model input."""
    import torch

    from contract.model import pad_batch
    from contract.text import PreprocessSettings, SubwordHasher, TextEncoder

    hasher = SubwordHasher(500)
    train = [["oil", "prices", "fall"], ["stocks", "rally"]]
    vocab = Vocabulary.fit(train)
    texts = ["Oil prices fall", "Stocks rally on unseen news", "(Reuters)"]
    encoder = TextEncoder(PreprocessSettings(), vocab, hasher)
    tokens = [encoder.normalizer.tokens(t) for t in texts]
    extended, table = subword_table(vocab, tokens, hasher)
    assert extended.itos[: len(vocab)] == vocab.itos and set(extended.itos[len(vocab) :]) == {"on", "unseen", "news"}
    ids, lengths = encode_matrix(tokens, extended)
    served, served_lengths = pad_batch(encoder.encode_many(texts))
    looked_up = torch.from_numpy(table)[torch.from_numpy(ids)]
    assert torch.equal(torch.from_numpy(lengths), served_lengths)
    width = served.shape[2]
    assert torch.equal(looked_up[:, :, :width], served) and not looked_up[:, :, width:].any()
