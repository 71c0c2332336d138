"""Engine units: word dropout, early stopping's private copy, best-weight restore, devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from contract.model import ModelConfig, TextClassifier
from contract.text import PAD_INDEX, UNK_INDEX, Vocabulary
from training.config import FitConfig
from training.data import encode_matrix
from training.distributed import DistContext, resolve_device
from training.engine import EarlyStopping, EncodedRows, apply_word_dropout, evaluate_split, fit


def test_word_dropout_only_replaces_real_tokens_with_unk():
    torch.manual_seed(0)
    ids = torch.tensor([[5, 6, 7, 8, PAD_INDEX, PAD_INDEX]] * 200)
    out = apply_word_dropout(ids, 0.5)
    assert torch.equal(out[:, 4:], ids[:, 4:])
    changed = out != ids
    assert changed.any() and (out[changed] == UNK_INDEX).all()
    share = changed[:, :4].float().mean().item()
    assert 0.4 < share < 0.6
    assert apply_word_dropout(ids, 0.0) is ids


def test_rare_words_are_dropped_at_their_own_rate():
    """Per-word rates: the words found in at most ``rare_titles`` training titles get the rare
    rate, the others the common one; n-grams are kept, padding never changes."""
    from training.fitting import word_dropout_rates

    vocab = Vocabulary(["<PAD>", "<UNK>", "oil", "prices", "zloty", "wins"])
    titles = [["oil", "prices"], ["oil", "zloty"], ["oil", "prices", "wins"], ["prices"]]
    rates = word_dropout_rates(vocab, titles, 0.0, 0.9, rare_titles=1)
    assert rates is not None and rates.tolist() == pytest.approx([0, 0, 0, 0, 0.9, 0.9])
    assert word_dropout_rates(vocab, titles, 0.2, None, 1) is None  # one rate for every word
    torch.manual_seed(0)
    words = torch.tensor([[2, 3, 4, 5, PAD_INDEX]] * 400)
    ids = torch.stack([words, torch.full_like(words, 7) * (words != PAD_INDEX)], dim=2)  # one n-gram each
    out = apply_word_dropout(ids, rates)
    assert torch.equal(out[..., 1], ids[..., 1]) and torch.equal(out[:, :2], ids[:, :2]) and (out[:, 4] == 0).all()
    dropped = (out[:, 2:4, 0] == UNK_INDEX).float().mean().item()
    assert 0.85 < dropped < 0.95


def test_early_stopping_keeps_a_private_copy_of_the_best_weights():
    model = nn.Linear(3, 2)
    stopper = EarlyStopping(patience=2, mode="min")
    assert not stopper.step(1.0, 1, model)
    best = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)  # in place, as optimizer steps do
    assert not stopper.step(2.0, 2, model)
    assert stopper.step(3.0, 3, model)  # patience exhausted
    stopper.restore(model)
    assert stopper.best_epoch == 1
    assert all(torch.equal(model.state_dict()[k], v) for k, v in best.items())


def test_early_stopping_max_mode():
    stopper = EarlyStopping(patience=1, mode="max")
    model = nn.Linear(1, 1)
    assert not stopper.step(0.5, 1, model)
    assert not stopper.step(0.7, 2, model)
    assert stopper.step(0.6, 3, model) and stopper.best_epoch == 2


def _toy_split(n: int, seed: int):
    """Class k's texts contain word "wk" among noise words, so the task is learnable."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    texts = [[f"n{rng.integers(0, 20)}" for _ in range(rng.integers(1, 6))] + [f"w{k}"] for k in y]
    return texts, y.astype(np.int64)


@pytest.mark.parametrize(("ema_decay", "sparse"), [(None, False), (0.9, False), (None, True)])
def test_fit_learns_and_restores_the_best_epoch(ema_decay, sparse):
    train_texts, train_y = _toy_split(300, 0)
    val_texts, val_y = _toy_split(100, 1)
    vocab = Vocabulary.fit(train_texts)
    tr_ids, tr_len = encode_matrix(train_texts, vocab)
    va_ids, va_len = encode_matrix(val_texts, vocab)
    torch.manual_seed(0)
    model = TextClassifier(ModelConfig(len(vocab), 3, embedding_dim=8, hidden_dim=8, fc_dim=8, pooling="last_max"))
    config = FitConfig(
        epochs=6, batch_size=32, lr=0.01, weight_decay=0.0, label_smoothing=0.0, word_dropout=0.1, grad_clip=1.0,
        patience=10, lr_patience=1, lr_factor=0.5, seed=0, ema_decay=ema_decay, sparse_embeddings=sparse,
    )  # fmt: skip
    result = fit(
        model, EncodedRows(tr_ids, tr_len, train_y), EncodedRows(va_ids, va_len, val_y), config, dist=DistContext()
    )
    assert not model.embedding.sparse  # the model leaves as it was built
    assert [h["epoch"] for h in result.history] == list(range(1, 7))
    best = min(result.history, key=lambda h: h["val_loss"])
    assert result.best_epoch == best["epoch"]
    loss, f1, _ = evaluate_split(model, va_ids, va_len, val_y, torch.device("cpu"), nn.CrossEntropyLoss())
    assert loss == pytest.approx(best["val_loss"], abs=1e-5)  # the best weights, not the last
    assert f1 > 0.9


def test_device_auto_and_cuda_request():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")


def test_restore_returns_the_best_epochs_weights_when_validation_loss_rises_late(monkeypatch):
    """Validation loss falls, then rises for two epochs: the model must end at epoch 3's weights."""
    from training import engine

    train_texts, train_y = _toy_split(200, 0)
    vocab = Vocabulary.fit(train_texts)
    ids, lengths = encode_matrix(train_texts, vocab)
    torch.manual_seed(0)
    model = TextClassifier(ModelConfig(len(vocab), 3, embedding_dim=8, hidden_dim=8, fc_dim=8))
    losses = iter([1.0, 0.8, 0.6, 0.9, 1.2])
    seen: list[dict[str, torch.Tensor]] = []

    def scripted_validation(scored, *args, **kwargs):
        seen.append({k: v.clone() for k, v in scored.state_dict().items()})
        return next(losses), 0.5, np.zeros(0)

    monkeypatch.setattr(engine, "evaluate_split", scripted_validation)
    config = FitConfig(
        epochs=5, batch_size=32, lr=0.01, weight_decay=0.0, label_smoothing=0.0, word_dropout=0.0, grad_clip=1.0,
        patience=10, lr_patience=10, lr_factor=0.5, seed=0,
    )  # fmt: skip
    result = fit(
        model, EncodedRows(ids, lengths, train_y), EncodedRows(ids, lengths, train_y), config, dist=DistContext()
    )
    assert result.best_epoch == 3 and len(seen) == 5
    final = model.state_dict()
    assert all(torch.equal(final[k], v) for k, v in seen[2].items())  # epoch 3
    assert not all(torch.equal(final[k], v) for k, v in seen[4].items())  # not the last epoch


def test_replayed_schedule_runs_every_epoch_at_its_rate_and_keeps_the_last_weights(monkeypatch):
    """A refit replays the chosen epochs: no early stop, no plateau decay, last weights kept."""
    from training import engine

    train_texts, train_y = _toy_split(120, 0)
    vocab = Vocabulary.fit(train_texts)
    ids, lengths = encode_matrix(train_texts, vocab)
    torch.manual_seed(0)
    model = TextClassifier(ModelConfig(len(vocab), 3, embedding_dim=8, hidden_dim=8, fc_dim=8))
    losses = iter([0.5, 0.9, 1.5, 2.0])  # would stop and restore epoch 1 in a normal run
    monkeypatch.setattr(engine, "evaluate_split", lambda *a, **k: (next(losses), 0.5, np.zeros(0)))
    config = FitConfig(
        epochs=15, batch_size=32, lr=0.01, weight_decay=0.0, label_smoothing=0.0, word_dropout=0.0, grad_clip=1.0,
        patience=1, lr_patience=0, lr_factor=0.5, seed=0,
    )  # fmt: skip
    result = fit(
        model,
        EncodedRows(ids, lengths, train_y),
        EncodedRows(ids, lengths, train_y),
        config,
        dist=DistContext(),
        lr_schedule=[0.01, 0.01, 0.005, 0.001],
    )
    assert [h["lr"] for h in result.history] == [0.01, 0.01, 0.005, 0.001]
    assert result.best_epoch == 4
