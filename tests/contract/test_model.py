"""Model contract: packed vs unpacked recurrence, batched vs single rows, subword embeddings,
temperature, and configs written before the newer fields existed."""

from __future__ import annotations

import pytest
import torch

from contract.model import POOLINGS, RNN_TYPES, ModelConfig, TextClassifier, pad_batch, predict_proba, probabilities
from contract.text import UNK_INDEX, PreprocessSettings, TextEncoder, Vocabulary

WORDS = ["oil", "prices", "fall", "stocks", "rally", "microsoft", "shares", "team", "wins"]


def _model(rnn_type: str = "bigru", pooling: str = "last_max", **extra: int) -> TextClassifier:
    torch.manual_seed(0)
    config = ModelConfig(
        len(WORDS) + 2, 3, rnn_type=rnn_type, embedding_dim=8, hidden_dim=8, fc_dim=8, pooling=pooling, **extra
    )
    return TextClassifier(config).eval()


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("rnn_type", RNN_TYPES)
def test_packed_and_unpacked_agree_without_padding(rnn_type, pooling):
    """The unpacked fast path (equal lengths) computes what the packed path computes."""
    model = _model(rnn_type, pooling)
    ids, lengths = pad_batch([[2, 3, 4, 5], [6, 7, 8, 9], [3, 3, 2, 10]])
    with torch.inference_mode():
        packed = model(ids, lengths, pack=True)
        plain = model(ids, lengths, pack=False)
    assert torch.allclose(packed, plain, atol=1e-6)


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("rnn_type", RNN_TYPES)
def test_padding_never_changes_a_rows_output(rnn_type, pooling):
    """Each row of a padded batch equals that row alone: padding stays out of the recurrence."""
    model = _model(rnn_type, pooling)
    rows = [[2, 3, 4, 5, 6, 7], [8], [9, 10, 2]]
    ids, lengths = pad_batch(rows)
    batched = predict_proba(model, ids, lengths)
    for i, row in enumerate(rows):
        single = predict_proba(model, *pad_batch([row]))
        assert torch.allclose(batched[i], single[0], atol=1e-6), i


def test_subword_model_handles_padding_and_unseen_words():
    vocab = Vocabulary(["<PAD>", "<UNK>", *WORDS])
    model = _model(subword_buckets=97)
    encoder = TextEncoder(PreprocessSettings(), vocab, model.config.subword_hasher())
    texts = ["Oil prices fall", "Microsofts shares rally today", "zzzz"]
    encoded = encoder.encode_many(texts)
    ids, lengths = pad_batch(encoded)
    assert ids.dim() == 3 and ids.shape[:2] == (3, 4) and lengths.tolist() == [3, 4, 1]
    batched = predict_proba(model, ids, lengths)
    for i, row in enumerate(encoded):
        assert torch.allclose(batched[i], predict_proba(model, *pad_batch([row]))[0], atol=1e-6)
    # Two different unseen words get different vectors (both would be plain <UNK> without
    # subwords), and an unseen word shares its n-grams with the known word it contains.
    assert encoder.subwords is not None
    unseen, _ = pad_batch([[(UNK_INDEX, *encoder.subwords(w)) for w in ("microsofts", "zzzz")]])
    known, _ = pad_batch([[(vocab.stoi["microsoft"], *encoder.subwords("microsoft"))]])
    with torch.no_grad():
        vectors = model.embed(unseen)[0]
        sub_only = vectors - model.embedding.weight[UNK_INDEX]
        known_sub = model.embed(known)[0, 0] - model.embedding.weight[vocab.stoi["microsoft"]]
    assert not torch.allclose(vectors[0], vectors[1])
    cos = torch.nn.functional.cosine_similarity
    assert cos(sub_only[0], known_sub, dim=0) > cos(sub_only[1], known_sub, dim=0) + 0.3


def _full_and_short_encoders(model: TextClassifier, vocab: Vocabulary) -> tuple[TextEncoder, TextEncoder]:
    """The training-time encoding (every word's n-grams) and the folded model's (unknown words' only)."""
    hasher = model.config.subword_hasher()
    return (
        TextEncoder(PreprocessSettings(), vocab, hasher),
        TextEncoder(PreprocessSettings(), vocab, hasher, known_word_grams=False),
    )


def test_folded_vocabulary_answers_what_averaging_every_words_ngrams_answers():
    """Serving looks a known word's vector (word + mean of its n-grams) up once; only unknown
    words carry n-grams. Same logits as the training-time input, for known, unseen and empty."""
    vocab = Vocabulary(["<PAD>", "<UNK>", *WORDS])
    model = _model(subword_buckets=97)
    with torch.no_grad():
        model.embedding.weight[1:].normal_()  # <UNK> and the words apart from their n-grams
    full, short = _full_and_short_encoders(model, vocab)
    texts = ["Oil prices fall", "Microsofts shares rally today", "zzzz", "", "team wins"]
    with torch.inference_mode():
        expected = model(*pad_batch(full.encode_many(texts)))
        model.fold_word_ngrams(vocab)
        assert model.folded is not None and model.folded.shape == (len(vocab), 8)
        encoded = short.encode_many(texts)
        assert encoded[0] == [(vocab.stoi[w],) for w in ("oil", "prices", "fall")]
        assert encoded[1][0][0] == UNK_INDEX and len(encoded[1][0]) > 1  # "microsofts" keeps its n-grams
        assert torch.allclose(model(*pad_batch(encoded)), expected, atol=1e-5)
        # Known words' n-grams are already folded in: a full encoding gives the same answer.
        assert torch.allclose(model(*pad_batch(full.encode_many(texts))), expected, atol=1e-5)
    # In training mode the table is not used (it does not follow the weights).
    model.train()
    with pytest.raises(ValueError, match="without their n-grams"):
        model(*pad_batch(encoded[:1]))


def test_an_unfolded_model_refuses_known_words_without_ngrams():
    vocab = Vocabulary(["<PAD>", "<UNK>", *WORDS])
    model = _model(subword_buckets=97)
    short = TextEncoder(PreprocessSettings(), vocab, model.config.subword_hasher(), known_word_grams=False)
    for texts in (["oil prices"], ["oil zzzz"]):  # no n-gram column at all, or one for the unknown word only
        with pytest.raises(ValueError, match="fold_word_ngrams"):
            model(*pad_batch(short.encode_many(texts)))


def test_subword_model_refuses_word_ids_alone():
    model = _model(subword_buckets=97)
    with pytest.raises(ValueError, match="character n-grams"):
        model(*pad_batch([[2, 3]]))


def test_wide_head_adds_a_normalised_bag_of_the_titles_words_and_ngrams():
    vocab = Vocabulary(["<PAD>", "<UNK>", *WORDS])
    model = _model(subword_buckets=97, subword_head=True, subword_embeddings=False)
    assert model.subword_embedding is None and model.head_words is not None and model.head_grams is not None
    encoder = TextEncoder(PreprocessSettings(), vocab, model.config.subword_hasher())
    encoded = encoder.encode_many(["Oil prices fall", "Microsofts shares rally today", "zzzz"])
    ids, lengths = pad_batch(encoded)
    with torch.no_grad():
        start = model(ids, lengths)
        model.head_words.weight[1:].normal_()
        model.head_grams.weight[1:].normal_()
        logits = model(ids, lengths)
    # The head starts at zero (training begins from the recurrent model) and then adds, per
    # title, the sum of its words' and n-grams' weights over the square root of their count.
    row = [i for token in encoded[1] for i in token]
    words = [token[0] for token in encoded[1]]
    grams = [g for token in encoded[1] for g in token[1:]]
    expected = (model.head_words.weight[words].sum(0) + model.head_grams.weight[grams].sum(0)) / len(row) ** 0.5
    assert torch.allclose(logits[1] - start[1], expected, atol=1e-5)
    for i, one in enumerate(encoded):  # padding adds nothing
        assert torch.allclose(logits[i], model(*pad_batch([one]))[0], atol=1e-5), i


def _linear_model(bigrams: int = 31, grams: int = 0) -> TextClassifier:
    model = _model(subword_buckets=97, linear_head=True, linear_bigram_buckets=bigrams, linear_gram_buckets=grams)
    assert model.linear_words is not None and model.linear_grams is not None and model.linear_bias is not None
    with torch.no_grad():  # a fitted head: weights, then a positive idf squared in the last column
        for table in (model.linear_words, model.linear_grams, model.linear_bigrams):
            assert table is not None
            table.weight[1:, :-1].normal_()
            table.weight[1:, -1].uniform_(1.0, 4.0)
        model.linear_words.weight[UNK_INDEX] = 0.0
        model.linear_bias.normal_()
    return model


@pytest.mark.parametrize("grams", [0, 4 * 97])
def test_linear_head_adds_two_normalised_tfidf_bags_scaled_beside_the_recurrent_logits(grams):
    """Words and bigrams over their own norm, n-grams over theirs; the scales weigh the two parts."""
    vocab = Vocabulary(["<PAD>", "<UNK>", *WORDS])
    model = _linear_model(grams=grams)
    encoder = TextEncoder(PreprocessSettings(), vocab, model.config.subword_hasher())
    encoded = encoder.encode_many(["Oil prices fall", "Microsofts shares rally today", "zzzz", ""])
    ids, lengths = pad_batch(encoded)
    assert model.linear_words is not None and model.linear_grams is not None and model.linear_bigrams is not None

    def scaled(rnn_scale: float, linear_scale: float) -> torch.Tensor:
        model.config = ModelConfig(**{**model.config.to_dict(), "rnn_scale": rnn_scale, "linear_scale": linear_scale})
        return model(ids, lengths)

    with torch.inference_mode():
        linear = model.linear_logits(ids)
        both = model(ids, lengths)
        rnn = scaled(1.0, 0.0)
        assert torch.allclose(scaled(0.0, 1.0), linear, atol=1e-6)
    assert torch.allclose(both, rnn + linear, atol=1e-5)
    with torch.inference_mode():
        assert torch.allclose(scaled(0.5, 2.0), 0.5 * rnn + 2.0 * linear, atol=1e-5)
    words = [token[0] for token in encoded[1]]
    grams = [g for token in encoded[1] for g in token[1:]]
    pairs = [(a * 1_000_003 + b) % 31 + 1 for a, b in zip(words, words[1:], strict=False) if min(a, b) > UNK_INDEX]
    word_bag = model.linear_words.weight[words].sum(0) + model.linear_bigrams.weight[pairs].sum(0)
    char_bag = model.linear_grams.weight[grams].sum(0)
    expected = sum(bag[:-1] / bag[-1].sqrt() for bag in (word_bag, char_bag)) + model.linear_bias
    assert torch.allclose(linear[1], expected, atol=1e-5)
    assert torch.allclose(linear[3], model.linear_bias)  # no tokens: the bias alone
    for i, one in enumerate(encoded):  # padding adds nothing
        assert torch.allclose(linear[i], model.linear_logits(pad_batch([one])[0])[0], atol=1e-5), i


@pytest.mark.parametrize("grams", [0, 4 * 97])
def test_folded_linear_head_answers_what_the_full_encoding_answers(grams):
    """Serving folds each known word's n-gram weights into one row; unknown words carry theirs."""
    vocab = Vocabulary(["<PAD>", "<UNK>", *WORDS])
    model = _linear_model(grams=grams)
    full, short = _full_and_short_encoders(model, vocab)
    texts = ["Oil prices fall", "Microsofts shares rally today", "zzzz oil", "", "team wins wins"]
    with torch.inference_mode():
        expected = model(*pad_batch(full.encode_many(texts)))
        model.fold_word_ngrams(vocab)
        assert model.folded_linear is not None and model.folded_linear.shape == (len(vocab), 8)
        assert torch.allclose(model(*pad_batch(short.encode_many(texts))), expected, atol=1e-5)
        assert torch.allclose(model(*pad_batch(full.encode_many(texts))), expected, atol=1e-5)


def test_a_head_with_its_own_gram_buckets_leaves_the_embeddings_reading_their_own():
    """Ids hashed into 4 x 97 buckets: the head reads them as they are, the embeddings modulo 97,
    which is the bucket the shared hashing gives, so the recurrent part answers as before."""
    vocab = Vocabulary(["<PAD>", "<UNK>", *WORDS])
    shared, own = _linear_model(), _linear_model(grams=4 * 97)
    assert own.linear_grams is not None and own.linear_grams.num_embeddings == 4 * 97 + 1
    own.load_state_dict({k: v for k, v in shared.state_dict().items() if k != "linear_grams.weight"}, strict=False)
    texts = ["Oil prices fall", "Microsofts shares rally today", "zzzz oil", ""]
    ids_shared = pad_batch(_full_and_short_encoders(shared, vocab)[0].encode_many(texts))[0]
    ids_own = pad_batch(_full_and_short_encoders(own, vocab)[0].encode_many(texts))[0]
    assert int(ids_own[..., 1:].max()) > 97  # the head's ids do go past the embeddings' buckets
    assert torch.equal(own.embedding_grams(ids_own[..., 1:]), ids_shared[..., 1:])
    with torch.inference_mode():
        assert torch.equal(own.embed(ids_own), shared.embed(ids_shared))
        for model in (shared, own):
            model.fold_word_ngrams(vocab)
        assert own.folded is not None and shared.folded is not None
        assert torch.equal(own.folded, shared.folded)


@pytest.mark.parametrize("bad", [{"linear_gram_buckets": 100}, {"linear_gram_buckets": -97}, {"subword_buckets": 0}])
def test_the_heads_gram_buckets_must_be_a_multiple_of_the_embeddings(bad):
    with pytest.raises(ValueError, match="linear_gram_buckets"):
        ModelConfig(10, 2, **{"subword_buckets": 97, "linear_gram_buckets": 194, **bad})


def test_temperature_rescales_probabilities_but_never_the_prediction():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    sharp, flat = probabilities(logits, 0.5), probabilities(logits, 2.0)
    assert torch.equal(sharp.argmax(1), flat.argmax(1))
    assert (sharp.max(1).values > probabilities(logits).max(1).values).all()
    assert (flat.max(1).values < probabilities(logits).max(1).values).all()
    model = _model()
    calibrated = TextClassifier(ModelConfig(**{**model.config.to_dict(), "temperature": 2.0})).eval()
    calibrated.load_state_dict(model.state_dict())
    ids, lengths = pad_batch([[2, 3, 4]])
    with torch.inference_mode():
        expected = torch.softmax(model(ids, lengths) / 2.0, dim=-1)
    assert torch.allclose(predict_proba(calibrated, ids, lengths), expected)


def test_config_without_the_newer_fields_means_no_subwords_and_no_scaling():
    old = {
        "vocab_size": 50, "num_classes": 4, "rnn_type": "bigru", "embedding_dim": 8, "hidden_dim": 8,
        "fc_dim": 8, "dropout": 0.5, "embedding_dropout": 0.3, "pooling": "last_max",
    }  # fmt: skip
    config = ModelConfig.from_dict(old)
    assert config.subword_buckets == 0 and config.subword_hasher() is None and config.temperature == 1.0
    assert TextClassifier(config).subword_embedding is None


@pytest.mark.parametrize("bad", [{"temperature": 0.0}, {"subword_buckets": -1}])
def test_invalid_new_fields_are_refused(bad):
    with pytest.raises(ValueError):
        ModelConfig(10, 2, **bad)


def features(model: TextClassifier, sequences: list[list[int]]) -> torch.Tensor:
    """What the dense layers see (the input of fc1), one row per sequence."""
    seen: list[torch.Tensor] = []
    handle = model.fc1.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    try:
        with torch.inference_mode():
            ids, lengths = pad_batch(sequences)
            model(ids, lengths)
    finally:
        handle.remove()
    return seen[0]


def test_backward_state_has_read_the_whole_title() -> None:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=20, num_classes=3, rnn_type="bigru", pooling="last", hidden_dim=8)
    model = TextClassifier(config).eval()
    # Two titles that differ only in their first token, and a longer one that pads the batch.
    rows = features(model, [[5, 6, 7, 8], [9, 6, 7, 8], [5, 6, 7, 8, 10, 11, 12]])
    backward = rows[:, config.hidden_dim :]
    # The backward GRU reads right to left: its final state has seen the first token. Read after
    # one step (the lesson's bug) it would only have seen "8", the same in both titles.
    assert not torch.allclose(backward[0], backward[1])
    alone = features(model, [[5, 6, 7, 8]])
    torch.testing.assert_close(rows[0], alone[0], atol=1e-6, rtol=0)  # padding never enters the recurrence


@pytest.mark.parametrize("folded", [False, True])
def test_a_batch_of_texts_that_preprocess_to_nothing_gets_an_answer(folded: bool) -> None:
    """Only padding and ``<UNK>`` tokens without n-grams: the ids have no n-gram columns at all."""
    vocab = Vocabulary(["<PAD>", "<UNK>", *WORDS])
    model = _model(subword_buckets=97)
    if folded:
        model.fold_word_ngrams(vocab)
    encoder = TextEncoder(PreprocessSettings(), vocab, model.config.subword_hasher(), known_word_grams=not folded)
    encoded = encoder.encode_many(["!!!", ""])
    probs = predict_proba(model, *pad_batch(encoded))
    assert probs.shape == (2, 3) and torch.isfinite(probs).all()
    assert torch.allclose(probs[0], probs[1])
