"""Pictures for people: sample grid, model diagram, learning curves, confusion matrix.

Everything is written to files (the lab runs headless, in containers and CI),
each first under a temporary name and renamed once complete.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # Files, not windows: no display in the container or CI.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from classifier.config import UserError  # noqa: E402


def _save(figure, path: Path) -> Path:
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        figure.savefig(temporary, dpi=100, bbox_inches="tight")
        os.replace(temporary, path)
    finally:
        plt.close(figure)
        temporary.unlink(missing_ok=True)
    return path


def show_samples(images: np.ndarray, labels: np.ndarray, class_names, path: Path, grid=(3, 4)) -> Path:
    """The lecture's 3x4 grid of training images, each labelled with its class name."""
    rows, cols = grid
    figure = plt.figure(figsize=(cols * 1.6, rows * 1.8))
    for i in range(min(rows * cols, len(images))):
        axis = figure.add_subplot(rows, cols, i + 1)
        axis.set_xticks([])
        axis.set_yticks([])
        image = images[i]
        axis.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None)
        axis.set_xlabel(class_names[int(labels[i])])
    return _save(figure, Path(path))


def learning_curves(history: dict, path: Path) -> Path:
    """Train vs validation loss and accuracy per epoch."""
    epochs = np.arange(1, len(history["loss"]) + 1)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key, title in ((left, "loss", "Loss"), (right, "accuracy", "Accuracy")):
        axis.plot(epochs, history[key], "o-", label="train")
        axis.plot(epochs, history[f"val_{key}"], "s-", label="validation")
        axis.set_xlabel("epoch")
        axis.set_title(title)
        axis.set_xticks(epochs)
        axis.grid(True, alpha=0.3)
        axis.legend()
    return _save(figure, Path(path))


def confusion_matrix_plot(matrix, class_names, path: Path) -> Path:
    """The test set's confusion matrix: true class down, predicted class across."""
    matrix = np.asarray(matrix)
    size = max(6.0, 0.45 * len(class_names))
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(matrix, cmap="Blues")
    ticks = np.arange(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=90)
    axis.set_yticks(ticks, class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    if len(class_names) <= 20:  # Numbers in 100x100 cells would be unreadable.
        threshold = matrix.max() / 2 if matrix.size else 0
        for (row, col), count in np.ndenumerate(matrix):
            axis.text(col, row, str(count), ha="center", va="center", fontsize=7,
                      color="white" if count > threshold else "black")
    return _save(figure, Path(path))


def graphviz_missing() -> str | None:
    """Why `plot_model` cannot run here, or None when it can."""
    if shutil.which("dot") is None:
        return "graphviz's `dot` is not on PATH (install it: `apt-get install graphviz`)"
    try:
        import pydot  # noqa: F401
    except ImportError:
        return "pydot is not installed (`pip install pydot`)"
    return None


def plot_model(model, path: Path) -> Path:
    """The model picture, through `keras.utils.plot_model` (pydot + graphviz)."""
    from tensorflow import keras

    if why := graphviz_missing():
        raise UserError(f"cannot draw the model: {why}")
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        keras.utils.plot_model(model, to_file=str(temporary), show_shapes=True, show_layer_names=True)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
