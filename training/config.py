"""TrainConfig: every hyperparameter and path of one training run, and the CLI that fills it."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields
from typing import Any

from contract.model import POOLINGS, RNN_TYPES, ModelConfig

SPLITS = ("random", "time", "unseen", "both")
TEMPERATURE_FITS = ("first", "crossfit")
TEMPERATURE_ROWS = ("own", "shifted")
DEFAULT_DATA_URL = "https://raw.githubusercontent.com/GokuMohandas/Made-With-ML/main/datasets/news.csv"


@dataclass(frozen=True)
class FitConfig:
    """How one model is optimised; TrainConfig takes its optimisation defaults from here."""

    epochs: int = 15
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-2
    label_smoothing: float = 0.1
    word_dropout: float = 0.35
    grad_clip: float = 1.0
    patience: int = 4
    lr_patience: int = 1
    lr_factor: float = 0.5
    early_stopping_metric: str = "val_loss"
    ema_decay: float | None = None
    # The wide head's learning rate over the rest's: a rare n-gram's weight is only updated in
    # the few batches that hold it, and Adam's step is bounded by the learning rate.
    head_lr_scale: float = 1.0
    # Sparse gradients for the word and n-gram tables, stepped by a lazy AdamW (training.engine.Optimizers):
    # a step then costs the rows a batch reads, not the whole tables; on a 2-core CPU no faster (off).
    sparse_embeddings: bool = False
    seed: int = 42


class ConfigError(ValueError):
    """A training option no run could use; reported as one ``error:`` line by the CLI."""


@dataclass
class TrainConfig:
    """Hyperparameters and paths; stored in the artifact as ``train_config.json``.

    The model's defaults come from ``ModelConfig`` and the optimiser's from ``FitConfig``, so
    each default is written once. Why each default is what it is, with the runs that chose
    it, is in docs/training.md.
    """

    # Paths
    data: str = DEFAULT_DATA_URL
    artifacts_dir: str = "artifacts"
    cache_dir: str | None = None
    nltk_data: str | None = None
    # Data
    limit_rows: int | None = None
    split: str = "random"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    remove_stopwords: bool = False
    keep_parenthesised: bool = True
    max_vocab: int | None = 30000
    min_freq: int = 1
    # Model
    model: str = ModelConfig.rnn_type  # the architecture's defaults live in one place: ModelConfig
    embedding_dim: int = ModelConfig.embedding_dim
    hidden_dim: int = ModelConfig.hidden_dim
    fc_dim: int = ModelConfig.fc_dim
    dropout: float = ModelConfig.dropout
    embedding_dropout: float = ModelConfig.embedding_dropout
    pooling: str = ModelConfig.pooling
    embedding_init: str = "lsa"
    embedding_init_std: float | None = 0.1
    subword_buckets: int = 20000
    subword_min_n: int = 3
    subword_max_n: int = 5
    subword_lsa_init: bool = True
    subword_embeddings: bool = ModelConfig.subword_embeddings
    subword_head: bool = ModelConfig.subword_head
    # The linear head (docs/training.md, "The linear head"): on by default, so off is the format of
    # artifacts written before it (ModelConfig.linear_head).
    linear_head: bool = True
    linear_bigram_buckets: int = 65536
    # The head's own n-gram buckets, this many times --subword-buckets (1: it shares the embeddings').
    linear_gram_factor: int = 4
    # Optimisation
    epochs: int = FitConfig.epochs
    batch_size: int = FitConfig.batch_size
    lr: float = FitConfig.lr
    weight_decay: float = FitConfig.weight_decay
    label_smoothing: float = FitConfig.label_smoothing
    word_dropout: float = FitConfig.word_dropout
    rare_word_dropout: float | None = None
    rare_word_titles: int = 2
    grad_clip: float = FitConfig.grad_clip
    ema_decay: float | None = FitConfig.ema_decay
    head_lr_scale: float = FitConfig.head_lr_scale
    sparse_embeddings: bool = FitConfig.sparse_embeddings
    class_weights: bool = False
    patience: int = FitConfig.patience
    lr_patience: int = FitConfig.lr_patience
    lr_factor: float = FitConfig.lr_factor
    early_stopping_metric: str = FitConfig.early_stopping_metric
    baseline_c: float | None = None
    calibrate: bool = True
    refit: bool = True
    temperature_fit: str = "first"
    temperature_rows: str = "shifted"
    # Runtime
    seed: int = 42
    device: str = "auto"
    threads: int | None = None
    quiet: bool = False
    plots: bool = True
    weights_dtype: str = "float16"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def model_config(self, vocab_size: int, num_classes: int) -> ModelConfig:
        """The network this run trains, for a vocabulary and label set fitted on its rows."""
        return ModelConfig(
            vocab_size=vocab_size,
            num_classes=num_classes,
            rnn_type=self.model,
            embedding_dim=self.embedding_dim,
            hidden_dim=self.hidden_dim,
            fc_dim=self.fc_dim,
            dropout=self.dropout,
            embedding_dropout=self.embedding_dropout,
            pooling=self.pooling,
            subword_buckets=self.subword_buckets,
            subword_min_n=self.subword_min_n,
            subword_max_n=self.subword_max_n,
            subword_embeddings=self.subword_embeddings,
            subword_head=self.subword_head,
            linear_head=self.linear_head,
            linear_bigram_buckets=self.linear_bigram_buckets if self.linear_head else 0,
            linear_gram_buckets=(
                self.linear_gram_factor * self.subword_buckets
                if self.linear_head and self.linear_gram_factor > 1
                else 0
            ),
        )

    @property
    def fractions(self) -> tuple[float, float, float]:
        """Shares of train, validation and test rows."""
        return (1 - self.val_fraction - self.test_fraction, self.val_fraction, self.test_fraction)

    def fit_config(self) -> FitConfig:
        """How each model of this run is optimised."""
        return FitConfig(**{f.name: getattr(self, f.name) for f in fields(FitConfig)})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> TrainConfig:
        """Parse command-line arguments (``sys.argv[1:]`` when ``argv`` is None)."""
        args = build_parser().parse_args(argv)
        values = vars(args)
        values["remove_stopwords"] = values.pop("stopwords")
        values["plots"] = not values.pop("no_plots")
        return cls(**values)

    def validate(self) -> None:
        """Raise ConfigError for values no run could use."""
        if self.model not in RNN_TYPES:
            raise ConfigError(f"model must be one of {RNN_TYPES}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}")
        if self.split not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError("device must be auto, cpu or cuda")
        if self.embedding_init not in ("lsa", "normal"):
            raise ConfigError("embedding_init must be lsa or normal")
        if self.temperature_fit not in TEMPERATURE_FITS:
            raise ConfigError(f"temperature_fit must be one of {TEMPERATURE_FITS}")
        if self.temperature_rows not in TEMPERATURE_ROWS:
            raise ConfigError(f"temperature_rows must be one of {TEMPERATURE_ROWS}")
        if self.early_stopping_metric not in ("val_loss", "val_f1"):
            raise ConfigError("early_stopping_metric must be val_loss or val_f1")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ConfigError("epochs, batch_size and patience must be at least 1")
        for name in ("limit_rows", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be at least 1 (or none), got {value}")
        if self.max_vocab is not None and self.max_vocab < 3:
            raise ConfigError(f"max-vocab must be at least 3 (<PAD>, <UNK> and one word) or none, got {self.max_vocab}")
        if self.subword_buckets < 0 or not 1 <= self.subword_min_n <= self.subword_max_n:
            raise ConfigError("subword buckets must be >= 0 (0: off) and 1 <= subword-min-n <= subword-max-n")
        if self.subword_head and not self.subword_buckets:
            raise ConfigError("--subword-head needs --subword-buckets > 0")
        if self.linear_head and (not self.subword_buckets or self.subword_head):
            raise ConfigError("--linear-head needs --subword-buckets > 0 and no --subword-head")
        if self.linear_head and self.refit and self.temperature_fit == "crossfit":
            raise ConfigError("--temperature-fit crossfit needs --no-linear-head (its models have no fitted scales)")
        if self.linear_bigram_buckets < 0:
            raise ConfigError("--linear-bigram-buckets must be >= 0 (0: no bigrams)")
        if self.linear_gram_factor < 1:
            raise ConfigError(
                f"--linear-gram-factor must be at least 1 (1: share the embeddings' buckets), "
                f"got {self.linear_gram_factor}"
            )
        val, test = self.val_fraction, self.test_fraction
        if not 0 < val < 1 or not 0 < test < 1 or val + test >= 1:
            raise ConfigError("val and test fractions must be in (0, 1) and sum to less than 1")
        if not 0 <= self.word_dropout < 1:
            raise ConfigError("word_dropout must be in [0, 1)")
        if self.rare_word_dropout is not None and not 0 <= self.rare_word_dropout < 1:
            raise ConfigError("rare_word_dropout must be in [0, 1) or none")
        if self.rare_word_titles < 1:
            raise ConfigError("rare_word_titles must be at least 1")


def _optional_int(text: str) -> int | None:
    """An integer, or None for "none" / "" (0 stays 0, and validation says whether it is allowed)."""
    return None if text.lower() in ("none", "") else int(text)


def _optional_float(text: str) -> float | None:
    return None if text.lower() in ("none", "") else float(text)


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m training",
        description="Train the headline classifier and write a versioned artifact to ARTIFACTS_DIR/<version>/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("paths")
    g.add_argument("--data", default=d.data, help="CSV path or http(s) URL with title,category columns")
    g.add_argument("--artifacts-dir", default=d.artifacts_dir, help="where the new version folder is created")
    g.add_argument(
        "--cache-dir", default=d.cache_dir, help="download cache for URL data (None: ~/.cache/headline-classifier)"
    )
    g.add_argument("--nltk-data", default=d.nltk_data, help="NLTK data folder with the stopwords (None: NLTK_DATA)")
    g = p.add_argument_group("data")
    g.add_argument("--limit-rows", type=_optional_int, default=d.limit_rows, help="use a seeded sample of N rows")
    g.add_argument(
        "--split",
        choices=SPLITS,
        default=d.split,
        help="random: stratified by category; time: consecutive blocks in file order (train on the earliest "
        "rows, validate on the next, test on the latest); unseen: a time block (the latest for seed 1, the one "
        "before for seed 2, ...) plus every title sharing a word found in at most two titles with it, so its "
        "rare words are never trained on; both: also train and report the time and unseen splits, then ship "
        "the random-split model",
    )
    g.add_argument("--val-fraction", type=float, default=d.val_fraction, help="validation share")
    g.add_argument("--test-fraction", type=float, default=d.test_fraction, help="test share")
    g.add_argument(
        "--stopwords",
        action=argparse.BooleanOptionalAction,
        default=d.remove_stopwords,
        help="remove NLTK English stopwords (--no-stopwords keeps them)",
    )
    g.add_argument(
        "--keep-parenthesised",
        action=argparse.BooleanOptionalAction,
        default=d.keep_parenthesised,
        help="keep text in parentheses, such as source tags like (AFP) (--no-keep-parenthesised drops it, as the "
        "lesson does)",
    )
    g.add_argument("--max-vocab", type=_optional_int, default=d.max_vocab, help="vocabulary size cap incl. PAD/UNK")
    g.add_argument("--min-freq", type=int, default=d.min_freq, help="minimum training-split count for a word")
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=RNN_TYPES, default=d.model, help="recurrent layer")
    g.add_argument("--embedding-dim", type=int, default=d.embedding_dim, help="word embedding size")
    g.add_argument("--hidden-dim", type=int, default=d.hidden_dim, help="recurrent hidden size per direction")
    g.add_argument("--fc-dim", type=int, default=d.fc_dim, help="hidden dense layer size")
    g.add_argument("--dropout", type=float, default=d.dropout, help="dropout before the output layer")
    g.add_argument("--embedding-dropout", type=float, default=d.embedding_dropout, help="dropout on embeddings")
    g.add_argument("--pooling", choices=POOLINGS, default=d.pooling, help="how recurrent states become features")
    g.add_argument(
        "--embedding-init",
        choices=("lsa", "normal"),
        default=d.embedding_init,
        help="lsa: SVD of the training split's TF-IDF matrix; normal: random with --embedding-init-std",
    )
    g.add_argument(
        "--embedding-init-std",
        type=_optional_float,
        default=d.embedding_init_std,
        help="std of the initial embeddings (None: torch's N(0, 1); lsa vectors are scaled to it, else 0.1)",
    )
    g.add_argument(
        "--subword-buckets",
        type=int,
        default=d.subword_buckets,
        help="hashed character n-gram embeddings added to each word's (0: off); unseen words get a vector",
    )
    g.add_argument("--subword-min-n", type=int, default=d.subword_min_n, help="shortest character n-gram")
    g.add_argument("--subword-max-n", type=int, default=d.subword_max_n, help="longest character n-gram")
    g.add_argument(
        "--subword-lsa-init",
        action=argparse.BooleanOptionalAction,
        default=d.subword_lsa_init,
        help="with --embedding-init lsa, start each n-gram at the mean LSA vector of the words containing it",
    )
    g.add_argument(
        "--subword-embeddings",
        action=argparse.BooleanOptionalAction,
        default=d.subword_embeddings,
        help="with --subword-buckets, add each token's n-gram vectors to its word vector (the GRU's input)",
    )
    g.add_argument(
        "--subword-head",
        action=argparse.BooleanOptionalAction,
        default=d.subword_head,
        help="with --subword-buckets, a wide linear head over the title's words and n-grams, added to the logits",
    )
    g.add_argument(
        "--linear-head",
        action=argparse.BooleanOptionalAction,
        default=d.linear_head,
        help="with --subword-buckets, a linear SVM on TF-IDF bags of the title's words, word bigrams and n-grams, "
        "fitted before the recurrent layer trains; its scores and the recurrent layer's are added with two "
        "weights fitted on validation rows",
    )
    g.add_argument(
        "--linear-bigram-buckets",
        type=int,
        default=d.linear_bigram_buckets,
        help="hashed word bigram buckets of the linear head (0: no bigrams)",
    )
    g.add_argument(
        "--linear-gram-factor",
        type=int,
        default=d.linear_gram_factor,
        help="the linear head's own character n-gram buckets, this many times --subword-buckets (1: share those)",
    )
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.epochs, help="maximum epochs (early stopping may end sooner)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="training batch size (per process)")
    g.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="cross-entropy label smoothing")
    g.add_argument("--word-dropout", type=float, default=d.word_dropout, help="share of training tokens set to <UNK>")
    g.add_argument(
        "--rare-word-dropout",
        type=_optional_float,
        default=d.rare_word_dropout,
        help="share of the rare words' tokens (see --rare-word-titles) set to <UNK> (None: --word-dropout)",
    )
    g.add_argument(
        "--rare-word-titles",
        type=int,
        default=d.rare_word_titles,
        help="a word in at most this many training titles is rare (for --rare-word-dropout)",
    )
    g.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm (0: off)")
    g.add_argument(
        "--ema-decay",
        type=_optional_float,
        default=d.ema_decay,
        help="keep an exponential moving average of the weights with this decay per step (None: off)",
    )
    g.add_argument(
        "--head-lr-scale",
        type=float,
        default=d.head_lr_scale,
        help="learning rate of the wide n-gram head (--subword-head) as a multiple of --lr",
    )
    g.add_argument(
        "--sparse-embeddings",
        action=argparse.BooleanOptionalAction,
        default=d.sparse_embeddings,
        help="sparse gradients for the word and n-gram embedding tables, stepped by a lazy AdamW (only the rows a "
        "batch read) while AdamW steps the rest; off: AdamW over the whole tables every batch",
    )
    g.add_argument(
        "--class-weights",
        action=argparse.BooleanOptionalAction,
        default=d.class_weights,
        help="weight the loss by inverse class frequency",
    )
    g.add_argument("--patience", type=int, default=d.patience, help="epochs without improvement before stopping")
    g.add_argument("--lr-patience", type=int, default=d.lr_patience, help="ReduceLROnPlateau patience")
    g.add_argument("--lr-factor", type=float, default=d.lr_factor, help="ReduceLROnPlateau factor")
    g.add_argument(
        "--early-stopping-metric",
        choices=("val_loss", "val_f1"),
        default=d.early_stopping_metric,
        help="metric that selects the best epoch",
    )
    g.add_argument(
        "--baseline-c", type=float, default=d.baseline_c, help="TF-IDF baseline C (None: tuned on validation)"
    )
    g.add_argument(
        "--calibrate",
        action=argparse.BooleanOptionalAction,
        default=d.calibrate,
        help="fit a softmax temperature on the validation split and store it in the artifact",
    )
    g.add_argument(
        "--refit",
        action=argparse.BooleanOptionalAction,
        default=d.refit,
        help="after early stopping, train a fresh model on train + val for the chosen epochs and ship that",
    )
    g.add_argument(
        "--temperature-fit",
        choices=TEMPERATURE_FITS,
        default=d.temperature_fit,
        help="with --refit, which validation logits the temperature is fitted on: first: the early-stopped model's "
        "(trained before the refit); crossfit: two models trained like the refit on train + half of val, each "
        "scoring the other half (two more trainings)",
    )
    g.add_argument(
        "--temperature-rows",
        choices=TEMPERATURE_ROWS,
        default=d.temperature_rows,
        help="validation rows the temperature is fitted on: own: the shipped split's; shifted: the unseen-word "
        "split's, whose rare words the model never saw, as on later news (trains that split too)",
    )
    g = p.add_argument_group("runtime")
    g.add_argument("--seed", type=int, default=d.seed, help="seed for the split, initialisation and batches")
    g.add_argument("--device", default=d.device, help="auto, cpu or cuda (auto picks CUDA when available)")
    g.add_argument("--threads", type=_optional_int, default=d.threads, help="torch CPU threads (None: torch default)")
    g.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    g.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    g.add_argument(
        "--weights-dtype",
        choices=("float32", "float16", "bfloat16"),
        default=d.weights_dtype,
        help="precision the artifact stores the weights in; metrics are measured on the rounded weights",
    )
    return p
