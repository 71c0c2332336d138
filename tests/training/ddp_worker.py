"""One rank of the 2-process test (run by torchrun): train, then save what this rank ended with.

Only rank 0 is given the NLTK data folder, as on a cluster where the other ranks have no NLTK
data and no network: the run must still use one stopword list everywhere.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from training.config import TrainConfig
from training.pipeline import run


def main(data: str, artifacts: str, nltk_data: str, out: str) -> None:
    rank = int(os.environ["RANK"])
    config = TrainConfig(
        data=data, artifacts_dir=artifacts, nltk_data=nltk_data if rank == 0 else "/nonexistent/nltk_data",
        remove_stopwords=True, device="cpu", threads=1, quiet=True, plots=False, baseline_c=10.0, seed=5,
        epochs=12, batch_size=32, embedding_dim=16, hidden_dim=16, fc_dim=16, lr=0.05, dropout=0.0,
        embedding_dropout=0.0, word_dropout=0.0, label_smoothing=0.0, patience=2, lr_patience=0,
    )  # fmt: skip
    result = run(config)
    assert result.model is not None and result.preprocessing is not None
    state = {
        "params": {k: v.detach().clone() for k, v in result.model.state_dict().items()},
        "history": result.metrics["history"],
        "best_epoch": result.metrics["best_epoch"],
        "stopwords": result.preprocessing.stopwords,
    }
    torch.save(state, Path(out) / f"rank{rank}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:5])
