"""Pictures for people: sample grid, model diagram, learning curves, confusion matrix.

Everything is written to files (the lab runs headless, in containers and CI)
through files.atomic_write.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
# Figure objects rather than pyplot: they draw to files with no display and
# leave a notebook's own plotting backend alone.
from matplotlib.figure import Figure

from classifier.config import UserError
from classifier.machinery.files import atomic_write


def _save(figure: Figure, path: Path) -> Path:
    with atomic_write(path) as temporary:
        figure.savefig(temporary, dpi=100, bbox_inches="tight")
    return path


def show_samples(images: np.ndarray, labels: np.ndarray, class_names, path: Path, grid=(3, 4)) -> Path:
    """The lecture's 3x4 grid of training images, each labelled with its class name."""
    rows, cols = grid
    figure = Figure(figsize=(cols * 1.6, rows * 1.8))
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
    epochs = np.arange(1, len(history["val_loss"]) + 1)
    figure = Figure(figsize=(10, 4))
    left, right = figure.subplots(1, 2)
    for axis, key, title in ((left, "loss", "Loss"), (right, "accuracy", "Accuracy")):
        if key in history:  # The lecture's advanced classifier validates only.
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
    figure = Figure(figsize=(size, size))
    axis = figure.subplots()
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
    with atomic_write(path) as temporary:
        keras.utils.plot_model(model, to_file=str(temporary), show_shapes=True, show_layer_names=True)
    return path
