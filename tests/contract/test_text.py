"""Preprocessing: the lesson's examples, and agreement with a copy of the lesson's regex pipeline."""

from __future__ import annotations

import csv
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.text import Normalizer, PreprocessSettings, load_stopwords

LESSON_STOPWORDS = ("the", "for", "a", "of", "and", "you", "don", "t", "don't", "i")


def lesson_preprocess(text: str, stopwords) -> str:
    """Copy of the lesson's regex preprocessing (lower=True, stem=False)."""
    text = text.lower()
    pattern = re.compile(r"\b(" + r"|".join(stopwords) + r")\b\s*")
    text = pattern.sub("", text)
    text = re.sub(r"\([^)]*\)", "", text)
    text = re.sub(r"([-;;.,!?<=>])", r" \1 ", text)
    text = re.sub("[^A-Za-z0-9]+", " ", text)
    text = re.sub(" +", " ", text)
    return text.strip()


@pytest.fixture(scope="module")
def nltk_stopwords(nltk_dir):
    return load_stopwords(nltk_dir, download=False)


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("Great week for the NYSE!", "great week nyse"),
        ("Wall St. Bears Claw Back Into the Black (Reuters)", "wall st bears claw back black"),
        ("Oil and Economy Cloud Stocks' Outlook (Reuters)", "oil economy cloud stocks outlook"),
        ("hi (there) you", "hi"),
        ("IBM's $3.5B deal -- a record?", "ibm 3 5b deal record"),
        ("", ""),
        ("(only parenthesised)", ""),
    ],
)
def test_lesson_examples_with_stopwords(nltk_stopwords, title, expected):
    normalizer = Normalizer(PreprocessSettings(stopwords=nltk_stopwords))
    assert normalizer.normalize(title) == expected
    assert lesson_preprocess(title, nltk_stopwords) == expected


@pytest.mark.parametrize(
    ("title", "expected"),
    [("Great week for the NYSE!", "great week for the nyse"), ("A (b) C-d", "a c d")],
)
def test_stopwords_off_keeps_every_token(title, expected):
    assert Normalizer(PreprocessSettings(remove_stopwords=False)).normalize(title) == expected


def test_stopword_list_ignored_when_removal_off():
    settings = PreprocessSettings(remove_stopwords=False, stopwords=("the",))
    assert Normalizer(settings).normalize("The end") == "the end"


def test_matches_lesson_regex_on_the_10k_titles(news_csv, nltk_stopwords):
    normalizer = Normalizer(PreprocessSettings(stopwords=nltk_stopwords))
    with open(news_csv, encoding="utf-8") as handle:
        titles = [row["title"] for row in csv.DictReader(handle)]
    assert len(titles) == 10_000
    mismatches = [t for t in titles if normalizer.normalize(t) != lesson_preprocess(t, nltk_stopwords)]
    assert mismatches == []


@pytest.mark.parametrize(
    ("title", "ours", "lesson"),
    [
        ("the_best deal", "best deal", "the best deal"),
        ("theé deal", "deal", "the deal"),
        ("the² deal", "deal", "the deal"),
        ("x(y)nyse", "x nyse", "xnyse"),
    ],
)
def test_documented_differences(title, ours, lesson):
    """Normalizer's docstring names these cases; they are the only known disagreements."""
    normalizer = Normalizer(PreprocessSettings(stopwords=LESSON_STOPWORDS))
    assert normalizer.normalize(title) == ours
    assert lesson_preprocess(title, LESSON_STOPWORDS) == lesson


# Text from ASCII letters, digits, punctuation, spaces and stopwords, but no "_", nothing
# non-ASCII and parentheses only as whole " (aside) " groups: the docstring claims the two
# pipelines agree on all of it.
_pieces = st.sampled_from(
    [*LESSON_STOPWORDS, "The", "Don't", "NYSE", "x", "b2b", " (AP) ", " (the) "]
    + [" ", "  ", "-", "!", "'", ".", ",", "9"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_pieces, max_size=12).map("".join))
def test_agrees_with_lesson_regex_on_ascii_text(text):
    normalizer = Normalizer(PreprocessSettings(stopwords=LESSON_STOPWORDS))
    assert normalizer.normalize(text) == lesson_preprocess(text, LESSON_STOPWORDS)


def test_missing_nltk_data_is_a_clear_error(tmp_path):
    from contract.text import StopwordsUnavailableError

    with pytest.raises(StopwordsUnavailableError, match="not found"):
        load_stopwords(tmp_path / "nope", download=False)


def test_char_ngrams_mark_word_boundaries():
    from contract.text import char_ngrams

    assert char_ngrams("cat", 3, 5) == ["<ca", "cat", "at>", "<cat", "cat>", "<cat>"]


def test_subword_ids_are_fixed_by_the_hash_not_the_process():
    """CRC-32 buckets: the same ids in every process and on every machine (pinned values)."""
    from contract.text import SubwordHasher

    hasher = SubwordHasher(1000)
    assert hasher("oil") == (995, 747, 262, 246, 391, 617)
    assert all(1 <= i <= 1000 for i in hasher("anything-long" * 5))
    assert len(SubwordHasher(1000, max_per_token=4)("internationalisation")) == 4


def test_stopword_removal_default_follows_the_list():
    """One default for training and the contract: removal is on exactly when a list is given."""
    assert PreprocessSettings().remove_stopwords is False
    assert PreprocessSettings(stopwords=("the",)).remove_stopwords is True
    assert PreprocessSettings(remove_stopwords=False, stopwords=("the",)).remove_stopwords is False
    restored = PreprocessSettings.from_dict(PreprocessSettings(stopwords=("the",)).to_dict())
    assert restored.remove_stopwords is True and restored.stopwords == ("the",)


def test_parenthesised_text_is_kept_only_when_asked_and_older_settings_drop_it():
    title = "Mars rover finds water (SPACE.com)"
    assert Normalizer(PreprocessSettings()).tokens(title) == ["mars", "rover", "finds", "water"]
    keep = PreprocessSettings(keep_parenthesised=True)
    assert Normalizer(keep).tokens(title) == ["mars", "rover", "finds", "water", "space", "com"]
    assert PreprocessSettings.from_dict(keep.to_dict()) == keep
    older = {k: v for k, v in keep.to_dict().items() if k != "keep_parenthesised"}
    assert PreprocessSettings.from_dict(older).keep_parenthesised is False
