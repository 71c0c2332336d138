"""Training and evaluation steps, early stopping and the epoch loop (no file I/O)."""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn

from contract.model import TextClassifier
from contract.text import PAD_INDEX, UNK_INDEX
from training.config import FitConfig
from training.data import BucketBatcher, slice_batch
from training.distributed import DistContext

log = logging.getLogger("training")


def apply_word_dropout(ids: torch.Tensor, p: float | torch.Tensor) -> torch.Tensor:
    """Replace a share ``p`` of real tokens with ``<UNK>`` so its embedding learns "unknown word".

    ``p`` is one share for every word, or a share per word index (see
    ``training.fitting.word_dropout_rates``). With subword features (``[B, T, 1 + K]``) only the
    word index is dropped: the token keeps its n-grams, exactly what a word unseen in training
    looks like at serving time.
    """
    if not isinstance(p, torch.Tensor) and p <= 0:
        return ids
    words = ids[..., 0] if ids.dim() == 3 else ids
    rate = p[words] if isinstance(p, torch.Tensor) else p
    drop = (torch.rand(words.shape, device=ids.device) < rate) & (words != PAD_INDEX)
    if ids.dim() == 3:
        out = ids.clone()
        out[..., 0] = words.masked_fill(drop, UNK_INDEX)
        return out
    return ids.masked_fill(drop, UNK_INDEX)


def features(ids: torch.Tensor, token_table: torch.Tensor | None) -> torch.Tensor:
    """Model input for a batch: the indices themselves, or their rows of the subword table."""
    return ids if token_table is None else token_table[ids]


def sparse_tables(model: nn.Module) -> list[nn.Embedding]:
    """The embedding tables whose gradients can be sparse: the word and n-gram tables (not the
    wide head's, whose learning rate is its own)."""
    tables = [getattr(model, name, None) for name in ("embedding", "subword_embedding")]
    return [t for t in tables if isinstance(t, nn.Embedding)]


class LazyAdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay for sparse gradients, updating only the rows a batch read.

    ``torch.optim.SparseAdam`` does the same arithmetic through sparse-tensor operations, which
    on the CPU cost more than the dense AdamW step they replace; here each step is a gather of
    the read rows' moments, the Adam update of those rows and a scatter back. A row's moments
    and weight decay move only when a batch reads it (the "lazy" Adam of large embedding
    tables): a row nobody read keeps its weight, where dense AdamW would still move it by its
    old momentum and decay it.
    """

    def __init__(
        self,
        params: list[nn.Parameter] | list[dict[str, Any]],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise ValueError("LazyAdamW steps sparse gradients only")
                grad = p.grad.coalesce()
                rows, values = grad._indices()[0], grad._values()
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                # Adam on the read rows only: gather them, step them with the fused kernel AdamW
                # uses for dense weights, scatter them back.
                weights = p.index_select(0, rows)
                exp_avg = state["exp_avg"].index_select(0, rows)
                exp_avg_sq = state["exp_avg_sq"].index_select(0, rows)
                torch._fused_adamw_(
                    [weights], [values], [exp_avg], [exp_avg_sq], [],
                    [torch.tensor(float(state["step"]))],
                    lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                    eps=group["eps"], amsgrad=False, maximize=False,
                )  # fmt: skip
                p.index_copy_(0, rows, weights)
                state["exp_avg"].index_copy_(0, rows, exp_avg)
                state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)


class Optimizers:
    """AdamW for the dense weights and, with sparse embedding tables, :class:`LazyAdamW` for those.

    A dense gradient of a table and an AdamW step over it cost the whole table on every batch,
    however few of its rows the batch reads; the lazy step updates only the rows a batch read.
    Each optimizer keeps its own plateau scheduler, stepped on the same validation loss, so both
    learning rates move together. Weight decay is AdamW's decoupled ``lr * weight_decay`` for both,
    applied to a table row only in the steps that read it.
    """

    def __init__(self, model: nn.Module, config: FitConfig, sparse: bool, fused: bool) -> None:
        tables = sparse_tables(model) if sparse else []
        for table in tables:
            table.sparse = True
        sparse_ids = {id(t.weight) for t in tables}
        head = [p for name, p in model.named_parameters() if name.startswith("head_")]
        rest = [p for name, p in model.named_parameters() if not name.startswith("head_") and id(p) not in sparse_ids]
        groups: list[dict[str, Any]] = [{"params": rest, "lr_scale": 1.0}]
        if head:
            groups.append({"params": head, "lr": config.lr * config.head_lr_scale, "lr_scale": config.head_lr_scale})
        # The fused kernel updates all parameters in one pass: on CPU the default per-tensor loop
        # over the embeddings took more time than forward and backward together.
        self.all: list[torch.optim.Optimizer] = [
            torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay, fused=fused)
        ]
        if tables:
            sparse_group = {"params": [t.weight for t in tables], "lr_scale": 1.0}
            self.all.append(LazyAdamW([sparse_group], lr=config.lr, weight_decay=config.weight_decay))
        self.schedulers = [
            torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="min", factor=config.lr_factor, patience=config.lr_patience
            )
            for opt in self.all
        ]
        self.params = [p for opt in self.all for group in opt.param_groups for p in group["params"]]

    def zero_grad(self) -> None:
        for opt in self.all:
            opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        for opt in self.all:
            opt.step()

    def plateau_step(self, val_loss: float) -> None:
        """One ReduceLROnPlateau step for every optimizer, on the same validation loss."""
        for scheduler in self.schedulers:
            scheduler.step(val_loss)

    def set_lr(self, lr: float) -> None:
        """Every group's learning rate to ``lr`` times its scale (a replayed schedule)."""
        for opt in self.all:
            for group in opt.param_groups:
                group["lr"] = lr * group["lr_scale"]

    @property
    def lr(self) -> float:
        return float(self.all[0].param_groups[0]["lr"])


def clip_gradients_(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale every gradient by one factor so that their joint L2 norm is at most ``max_norm``, as
    ``clip_grad_norm_`` does, sparse gradients included (torch's own refuses them).

    A sparse gradient is coalesced first (an n-gram read twice in a batch has two entries until
    then), and stays coalesced for the optimizer. Returns the norm before clipping, as a tensor on
    the gradients' device, so that a GPU step does not wait for it.
    """
    dense: list[torch.Tensor] = []
    sparse: list[torch.Tensor] = []
    for p in params:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
            sparse.append(p.grad)
        else:
            dense.append(p.grad)
    norms = [g._values().float().norm() for g in sparse]
    if dense:
        norms.append(nn.utils.get_total_norm(dense, foreach=True))
    if not norms:
        return torch.zeros(())
    # Dense gradients alone: exactly clip_grad_norm_'s arithmetic.
    total = (
        norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]))
    )
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    if dense:
        torch._foreach_mul_(dense, coef.to(dense[0].device))
    for g in sparse:
        g._values().mul_(coef.to(g.device))
    return total


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | Optimizers,
    loss_fn: nn.Module,
    ids: torch.Tensor,
    lengths: torch.Tensor,
    targets: torch.Tensor,
    word_dropout: float | torch.Tensor = 0.0,
    grad_clip: float = 0.0,
) -> float:
    """One optimisation step on one batch; returns the batch's mean loss."""
    model.train()
    if isinstance(optimizer, Optimizers):
        optimizer.zero_grad()
    else:
        optimizer.zero_grad(set_to_none=True)
    logits = model(apply_word_dropout(ids, word_dropout), lengths)
    loss = loss_fn(logits, targets)
    loss.backward()
    if grad_clip > 0:
        clip_gradients_(list(model.parameters()), grad_clip)
    optimizer.step()
    return float(loss.detach())


@torch.inference_mode()
def eval_step(model: nn.Module, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Logits for one batch with dropout off."""
    model.eval()
    return model(ids, lengths)


@torch.inference_mode()
def predict_logits(
    model: TextClassifier,
    ids: np.ndarray,
    lengths: np.ndarray,
    device: torch.device,
    batch_size: int = 1024,
    token_table: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits (CPU, float32) for every row of a padded matrix, in row order."""
    batcher = BucketBatcher(lengths, batch_size, seed=0, shuffle=False)
    out = torch.empty((len(lengths), model.config.num_classes), dtype=torch.float32)
    for rows in batcher:
        b_ids, b_len = slice_batch(ids, lengths, rows)
        b_in = features(torch.from_numpy(b_ids), token_table).to(device)
        logits = eval_step(model, b_in, torch.from_numpy(b_len))
        out[torch.from_numpy(rows)] = logits.float().cpu()
    return out


def evaluate_split(
    model: TextClassifier,
    ids: np.ndarray,
    lengths: np.ndarray,
    targets: np.ndarray,
    device: torch.device,
    loss_fn: nn.Module,
    token_table: torch.Tensor | None = None,
) -> tuple[float, float, np.ndarray]:
    """Mean loss, weighted F1 and predictions on one split."""
    logits = predict_logits(model, ids, lengths, device, token_table=token_table)
    y = torch.from_numpy(targets)
    loss = float(loss_fn(logits, y))
    pred = logits.argmax(dim=1).numpy()
    return loss, float(f1_score(targets, pred, average="weighted", zero_division=0)), pred


class EarlyStopping:
    """Keeps a private copy of the best weights; ``step`` says whether to stop."""

    def __init__(self, patience: int, mode: str = "min") -> None:
        self.patience = patience
        self.mode = mode
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0

    def improved(self, value: float) -> bool:
        return value < self.best if self.mode == "min" else value > self.best

    def step(self, value: float, epoch: int, model: nn.Module) -> bool:
        if self.improved(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            # A deep copy: state_dict() returns references that later steps overwrite.
            self.best_state = copy.deepcopy(model.state_dict())
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def restore(self, model: nn.Module) -> None:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    train_seconds: float = 0.0


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


@dataclass
class EncodedRows:
    """Padded token indices ``[N, T]``, their lengths and class targets of one set of rows."""

    ids: np.ndarray
    lengths: np.ndarray
    targets: np.ndarray


def fit(
    model: nn.Module,
    train: EncodedRows,
    val: EncodedRows,
    config: FitConfig,
    *,
    dist: DistContext | None = None,
    class_weights: torch.Tensor | None = None,
    token_table: torch.Tensor | None = None,
    word_dropout_rates: torch.Tensor | None = None,
    lr_schedule: list[float] | None = None,
    progress: bool = False,
    log_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> FitResult:
    """Train ``model`` (the bare module) in place and leave the best epoch's weights in it.

    Under DDP the wrapped model steps on this rank's shard of the batches; losses and
    validation metrics are averaged over ranks so every rank stops and decays together.
    With ``config.ema_decay`` the weights that are validated, kept and returned are an
    exponential moving average of the trained ones (smoother than any single step's weights).

    ``word_dropout_rates`` (one per word index) replaces ``config.word_dropout`` when given.

    ``lr_schedule`` replays a learning rate per epoch (a refit on train + val of the epochs an
    earlier run chose): the plateau scheduler and early stopping are off, and the model ends
    with the last epoch's weights, since the "validation" rows are then training rows.
    """
    dist = dist or DistContext()
    device = dist.device
    net = dist.wrap(model)
    # Sparse table gradients under DDP would need their own all-reduce; several processes keep
    # the dense ones.
    optimizer = Optimizers(
        model, config, sparse=config.sparse_embeddings and not dist.enabled, fused=device.type in ("cpu", "cuda")
    )
    weight = class_weights.to(device) if class_weights is not None else None
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)
    # Validation loss without smoothing or weights, so it is comparable across configs.
    val_loss_fn = nn.CrossEntropyLoss()
    batcher = BucketBatcher(
        train.lengths, config.batch_size, seed=config.seed, rank=dist.rank, world_size=dist.world_size
    )
    stopper = EarlyStopping(config.patience, mode="min" if config.early_stopping_metric == "val_loss" else "max")
    result = FitResult()
    ids_t = torch.from_numpy(train.ids)
    len_t = torch.from_numpy(train.lengths)
    y_t = torch.from_numpy(train.targets)
    word_dropout = config.word_dropout if word_dropout_rates is None else word_dropout_rates.to(device)
    ema = None
    if config.ema_decay:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
    # The model that is validated and kept: the EMA copy when there is one.
    scored = cast(TextClassifier, ema.module if ema is not None else model)
    started = time.perf_counter()
    epochs = len(lr_schedule) if lr_schedule is not None else config.epochs
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        if lr_schedule is not None:
            optimizer.set_lr(lr_schedule[epoch - 1])
        batcher.set_epoch(epoch)
        batches = batcher.batches()
        bar = _progress(len(batches), f"epoch {epoch}/{epochs}", progress)
        loss_sum, seen = 0.0, 0
        for rows in batches:
            rows_t = torch.from_numpy(rows)
            b_len = len_t[rows_t]
            b_ids = features(ids_t[rows_t, : int(b_len.max())], token_table).to(device, non_blocking=True)
            b_y = y_t[rows_t].to(device, non_blocking=True)
            loss = train_step(net, optimizer, loss_fn, b_ids, b_len, b_y, word_dropout, config.grad_clip)
            if ema is not None:
                ema.update_parameters(model)
            loss_sum += loss * len(rows)
            seen += len(rows)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
        if bar is not None:
            bar.close()
        loss_total, rows_total = dist.all_reduce_sum([loss_sum, float(seen)])
        train_loss = loss_total / rows_total
        val_loss, val_f1, _ = evaluate_split(
            scored, val.ids, val.lengths, val.targets, device, val_loss_fn, token_table=token_table
        )
        val_loss, val_f1 = dist.all_reduce_mean([val_loss, val_f1])
        lr_now = optimizer.lr
        seconds = time.perf_counter() - t0
        record = {
            "epoch": epoch,
            "train_loss": round(train_loss, 6),
            "val_loss": round(val_loss, 6),
            "val_f1": round(val_f1, 6),
            "lr": lr_now,
            "seconds": round(seconds, 3),
        }
        result.history.append(record)
        if log_epoch is not None:
            log_epoch(record)
        if lr_schedule is not None:
            stopper.best_epoch = epoch
            continue
        optimizer.plateau_step(val_loss)
        if stopper.step(val_loss if config.early_stopping_metric == "val_loss" else val_f1, epoch, scored):
            break
    for table in sparse_tables(model):
        table.sparse = False  # the model leaves as it was built
    if lr_schedule is None:
        stopper.restore(model)
    elif scored is not model:  # refit with EMA: keep the averaged weights, as a normal run does
        model.load_state_dict(scored.state_dict())
    result.best_epoch = stopper.best_epoch
    result.train_seconds = time.perf_counter() - started
    return result


def format_epoch(record: dict[str, Any]) -> str:
    return (
        f"epoch {record['epoch']:>3}  train_loss {record['train_loss']:.4f}  val_loss {record['val_loss']:.4f}  "
        f"val_f1 {record['val_f1']:.4f}  lr {record['lr']:.2e}  {record['seconds']:.1f}s"
    )


def progress_enabled(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()
