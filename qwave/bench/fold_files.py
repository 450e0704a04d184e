"""Per-fold outputs: metrics.json, predictions.csv, confusion.png and curves.png, all written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from qwave import atomic
from qwave.plot import plt, save_figure


def predictions_frame(ids: np.ndarray, y: np.ndarray, proba: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """One row per test sample: id, label, prediction and every class probability."""
    frame = pd.DataFrame({"id": ids, "label": [classes[i] for i in y], "pred": [classes[i] for i in proba.argmax(1)]})
    probs = pd.DataFrame(proba, columns=[f"p_{c}" for c in classes])
    return pd.concat([frame, probs], axis=1)


def plot_confusion(confusion: list[list[int]], classes: list[str], title: str):
    """Confusion matrix image (counts), class names on the axes when there are few enough to read."""
    matrix = np.asarray(confusion)
    size = min(4 + 0.2 * len(classes), 14)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    if len(classes) <= 25:
        ax.set_xticks(range(len(classes)), classes, rotation=90)
        ax.set_yticks(range(len(classes)), classes)
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_curves(history: list[dict], best_epoch: int, title: str):
    """Train/val loss and inner-val macro-F1 per epoch, the restored epoch marked."""
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, f1_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
    loss_ax.plot(epochs, [h["train_loss"] for h in history], label="train")
    loss_ax.plot(epochs, [h["val_loss"] for h in history], label="inner val")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.legend()
    f1_ax.plot(epochs, [h["val_macro_f1"] for h in history], color="tab:green")
    f1_ax.axvline(best_epoch, ls="--", color="grey", label=f"restored epoch {best_epoch}")
    f1_ax.set_xlabel("epoch")
    f1_ax.set_ylabel("inner-val macro-F1")
    f1_ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def write_fold(out_dir: Path, record: dict, ids: np.ndarray, y: np.ndarray, proba: np.ndarray, classes: list[str],
               plots: bool) -> None:
    """Write one fold's files; metrics.json last, so its presence marks the fold finished (``resume=true``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = predictions_frame(ids, y, proba, classes)
    atomic.write_with(out_dir / "predictions.csv", lambda tmp: frame.to_csv(tmp, index=False))
    if plots:
        title = f"{record['model']} fold {record['fold']} seed {record['seed']}"
        save_figure(plot_confusion(record["confusion"], classes, title), out_dir / "confusion.png")
        save_figure(plot_curves(record["history"], record["train"]["best_epoch"], title), out_dir / "curves.png")
    atomic.write_json(out_dir / "metrics.json", record)
