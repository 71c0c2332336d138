"""Test-split metrics in the lesson's shape, confusion matrix and PNG plots."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

# Class indices: a list or a numpy array.
Labels = Sequence[int] | np.ndarray


def performance(y_true: Labels, y_pred: Labels, classes: Sequence[str]) -> dict[str, Any]:
    """``{"overall": {precision, recall, f1, num_samples}, "class": {name: {...}}}``, weighted overall."""
    labels = list(range(len(classes)))
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
    overall = {"precision": float(p), "recall": float(r), "f1": float(f), "num_samples": int(len(y_true))}
    ps, rs, fs, ss = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    per_class = {
        name: {"precision": float(ps[i]), "recall": float(rs[i]), "f1": float(fs[i]), "num_samples": int(ss[i])}
        for i, name in enumerate(classes)
    }
    return {"overall": overall, "class": per_class}


def confusion(y_true: Labels, y_pred: Labels, classes: Sequence[str]) -> dict[str, Any]:
    """Rows are true classes, columns predictions, both in ``labels`` order."""
    matrix = confusion_matrix(y_true, y_pred, labels=list(range(len(classes))))
    return {"labels": list(classes), "matrix": matrix.tolist()}


def _figure_bytes(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def plot_files(
    history: list[dict[str, Any]], cm: dict[str, Any], best_epoch: int, calibration: dict[str, Any] | None = None
) -> dict[str, bytes]:
    """PNG bytes for the loss curves, learning rate, confusion matrix and (with a calibration
    report) the reliability diagram, keyed by artifact path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train (with regularisation)")
    ax.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation")
    if best_epoch:
        ax.axvline(best_epoch, color="grey", linestyle="--", label=f"best epoch {best_epoch}")
    ax.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    ax.legend()
    loss_png = _figure_bytes(fig)

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(epochs, [h["lr"] for h in history], marker="o")
    ax.set(xlabel="epoch", ylabel="learning rate", title="Learning rate", yscale="log")
    lr_png = _figure_bytes(fig)

    labels, matrix = cm["labels"], np.asarray(cm["matrix"])
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (test)")
    for i in range(len(labels)):
        for j in range(len(labels)):
            color = "white" if matrix[i, j] > matrix.max() / 2 else "black"
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=color)
    cm_png = _figure_bytes(fig)
    files = {"plots/loss.png": loss_png, "plots/lr.png": lr_png, "plots/confusion_matrix.png": cm_png}
    if calibration is not None:
        files["plots/reliability.png"] = _reliability_png(calibration)
    return files


def _reliability_png(calibration: dict[str, Any]) -> bytes:
    """Accuracy against mean confidence per bin on the test split, before and after scaling."""
    import matplotlib.pyplot as plt

    bins = calibration["bins"]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    test = calibration["test"]
    for key, label, marker in (
        ("reliability_before", f"before (ECE {test['ece_before']:.3f})", "o"),
        ("reliability_after", f"T = {calibration['temperature']:.2f} (ECE {test['ece_after']:.3f})", "s"),
    ):
        table = calibration[key]
        used = np.asarray(table["counts"]) > 0
        ax.plot(np.asarray(table["confidence"])[used], np.asarray(table["accuracy"])[used], marker=marker, label=label)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean confidence (top class)", ylabel="accuracy")
    ax.set_title(f"Reliability on the test split ({bins} bins)")
    ax.legend(loc="upper left")
    return _figure_bytes(fig)
