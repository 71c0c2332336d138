"""The shipped defaults are the variant the unseen-word proxy chose, and older variants keep their meaning."""

from __future__ import annotations

from dataclasses import replace

from bench.proxy_bench import VARIANTS
from training.config import TrainConfig


def test_the_default_config_is_the_proxys_chosen_variant():
    default = TrainConfig()
    assert replace(default, **VARIANTS["linear_bg64k_b256_lr3_g80k"]) == default
    assert (default.batch_size, default.lr, default.sparse_embeddings) == (256, 3e-3, False)
    assert (default.label_smoothing, default.linear_gram_factor) == (0.1, 4)


def test_variants_measured_before_a_default_changed_still_name_their_settings():
    before = replace(TrainConfig(), **VARIANTS["linear_bg64k"])
    assert (before.batch_size, before.lr, before.linear_head) == (128, 2e-3, True)
    assert replace(TrainConfig(), **VARIANTS["words"]).batch_size == 128
    assert replace(TrainConfig(), **VARIANTS["linear_bg64k_b256_lr3"]).linear_gram_factor == 1
    sparse = replace(TrainConfig(), **VARIANTS["linear_bg64k_sparse"])
    assert sparse.sparse_embeddings and (sparse.batch_size, sparse.lr) == (128, 2e-3)
