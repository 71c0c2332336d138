"""Sparse table gradients: the same gradients, clipping and Adam steps as the dense path."""

from __future__ import annotations

import torch
from torch import nn

from contract.model import ModelConfig, SparseRows, TextClassifier
from contract.text import PAD_INDEX
from training.config import FitConfig
from training.engine import LazyAdamW, Optimizers, clip_gradients_, sparse_tables


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T, 1 + K] ids with repeated words and n-grams, padded rows and padded n-gram columns."""
    g = torch.Generator().manual_seed(seed)
    words = torch.randint(2, 30, (6, 5), generator=g)
    grams = torch.randint(1, 40, (6, 5, 4), generator=g)
    grams[..., 3] = 0
    lengths = torch.tensor([5, 5, 4, 3, 3, 1])
    for row, n in enumerate(lengths.tolist()):
        words[row, n:] = PAD_INDEX
        grams[row, n:] = 0
    return torch.cat([words.unsqueeze(2), grams], dim=2), lengths


def _model() -> TextClassifier:
    torch.manual_seed(0)
    model = TextClassifier(ModelConfig(30, 3, subword_buckets=39, embedding_dim=8, hidden_dim=6, fc_dim=5))
    return model.train()


def _grads(model: TextClassifier, ids: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same dropout masks on both paths
    model(ids, lengths).square().sum().backward()
    return {n: p.grad.to_dense() for n, p in model.named_parameters() if p.grad is not None}


def test_sparse_tables_give_the_dense_gradients_row_for_row():
    ids, lengths = _batch()
    model = _model()
    dense = _grads(model, ids, lengths)
    for table in sparse_tables(model):
        table.sparse = True
    sparse = _grads(model, ids, lengths)
    assert model.embedding.weight.grad is not None and model.embedding.weight.grad.is_sparse
    assert model.subword_embedding is not None and model.subword_embedding.weight.grad is not None
    assert model.subword_embedding.weight.grad.is_sparse
    assert dense.keys() == sparse.keys()
    for name, grad in dense.items():
        assert torch.allclose(grad, sparse[name], atol=1e-6), name
    assert not sparse["embedding.weight"][PAD_INDEX].any()  # padding stays padding


def test_sparse_rows_gradient_holds_only_the_rows_read():
    table = torch.randn(10, 3, requires_grad=True)
    rows = torch.tensor([0, 4, 7])
    (SparseRows.apply(table, rows, 0) * torch.arange(9.0).view(3, 3)).sum().backward()
    grad = table.grad
    assert grad is not None and grad.is_sparse
    assert grad._indices()[0].tolist() == [0, 4, 7]
    assert grad._values()[0].abs().sum() == 0  # the padding row
    assert grad._values()[1:].tolist() == [[3.0, 4.0, 5.0], [6.0, 7.0, 8.0]]


def test_clipping_sparse_and_dense_gradients_matches_clip_grad_norm():
    torch.manual_seed(0)
    dense_a, dense_b = nn.Parameter(torch.randn(5, 2)), nn.Parameter(torch.randn(4))
    sparse_a, sparse_b = nn.Parameter(dense_a.detach().clone()), nn.Parameter(dense_b.detach().clone())
    grad_a = torch.randn(5, 2) * 3
    grad_a[1] = 0
    dense_a.grad, dense_b.grad = grad_a.clone(), torch.randn(4) * 3
    # The sparse gradient with a repeated row: it must be summed before the norm.
    half = grad_a[[0, 2, 3, 4, 4]] * torch.tensor([1.0, 1.0, 1.0, 0.25, 0.75]).unsqueeze(1)
    sparse_a.grad = torch.sparse_coo_tensor(torch.tensor([[0, 2, 3, 4, 4]]), half, (5, 2))
    sparse_b.grad = dense_b.grad.clone()
    expected = nn.utils.clip_grad_norm_([dense_a, dense_b], 1.0)
    total = clip_gradients_([sparse_a, sparse_b], 1.0)
    assert abs(total - float(expected)) < 1e-4
    assert torch.allclose(sparse_a.grad.to_dense(), dense_a.grad, atol=1e-6)
    assert torch.allclose(sparse_b.grad, dense_b.grad, atol=1e-6)


def test_lazy_adamw_is_adamw_on_the_rows_read_and_leaves_the_others():
    torch.manual_seed(0)
    start = torch.randn(6, 3)
    dense, lazy = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    reference = torch.optim.AdamW([dense], lr=0.1, weight_decay=0.05)
    optimizer = LazyAdamW([lazy], lr=0.1, weight_decay=0.05)
    for _ in range(3):  # every row read: the same steps as AdamW
        grad = torch.randn(6, 3)
        dense.grad = grad
        lazy.grad = torch.sparse_coo_tensor(torch.arange(6).unsqueeze(0), grad, (6, 3))
        reference.step()
        optimizer.step()
    assert torch.allclose(dense, lazy, atol=1e-6)
    before = lazy.detach().clone()
    lazy.grad = torch.sparse_coo_tensor(torch.tensor([[1, 4]]), torch.randn(2, 3), (6, 3))
    optimizer.step()
    moved = (lazy.detach() != before).any(dim=1)
    assert moved.tolist() == [False, True, False, False, True, False]


def test_optimizers_step_the_tables_lazily_and_move_both_learning_rates_together():
    model = _model()
    config = FitConfig(lr=0.01, lr_patience=0, lr_factor=0.5)
    optimizers = Optimizers(model, config, sparse=True, fused=False)
    assert [type(o) for o in optimizers.all] == [torch.optim.AdamW, LazyAdamW]
    table_ids = {id(t.weight) for t in sparse_tables(model)}
    assert {id(p) for p in optimizers.all[1].param_groups[0]["params"]} == table_ids
    assert not table_ids & {id(p) for p in optimizers.all[0].param_groups[0]["params"]}
    optimizers.plateau_step(1.0)
    optimizers.plateau_step(2.0)  # no improvement, patience 0: both halve
    assert [o.param_groups[0]["lr"] for o in optimizers.all] == [0.005, 0.005]
    optimizers.set_lr(0.2)
    assert [o.param_groups[0]["lr"] for o in optimizers.all] == [0.2, 0.2]
    dense = Optimizers(_model(), config, sparse=False, fused=False)
    assert len(dense.all) == 1 and not any(t.sparse for t in sparse_tables(_model()))


def test_clipping_dense_gradients_alone_is_clip_grad_norm_bit_for_bit():
    """The default (dense) path trains exactly as it did with torch's own clipping."""
    torch.manual_seed(0)
    for _ in range(20):
        ours = [nn.Parameter(torch.randn(*shape)) for shape in ((50, 7), (13,), (3, 4, 5))]
        theirs = [nn.Parameter(p.detach().clone()) for p in ours]
        for p, q in zip(ours, theirs, strict=True):
            p.grad = torch.randn(p.shape) * float(torch.rand(())) * 5
            q.grad = p.grad.clone()
        nn.utils.clip_grad_norm_(theirs, 1.0, foreach=True)
        clip_gradients_(ours, 1.0)
        assert all(torch.equal(p.grad, q.grad) for p, q in zip(ours, theirs, strict=True))
