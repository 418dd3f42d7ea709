"""The pictures are real, readable PNGs."""

import shutil

import matplotlib.image
import numpy as np
import pytest

from classifier.machinery import report
from classifier.config import UserError
from classifier.machinery.recipes import build_model


def _read_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(path)


def test_samples_grid_and_curves_and_matrix(tmp_path):
    images = np.random.default_rng(0).random((12, 28, 28, 1)).astype(np.float32)
    labels = np.arange(12) % 10
    names = [f"c{i}" for i in range(10)]
    picture = _read_png(report.show_samples(images, labels, names, tmp_path / "samples.png"))
    assert picture.shape[0] > 100 and picture.shape[1] > 100
    history = {"loss": [1.0, 0.5], "accuracy": [0.5, 0.8], "val_loss": [1.1, 0.7], "val_accuracy": [0.4, 0.7]}
    _read_png(report.learning_curves(history, tmp_path / "curves.png"))
    _read_png(report.confusion_matrix_plot(np.eye(10, dtype=int) * 5, names, tmp_path / "cm.png"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cm.png", "curves.png", "samples.png"]


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz is not installed")
def test_plot_model_writes_the_picture(tmp_path):
    path = report.plot_model(build_model("functional", (28, 28, 1), 10), tmp_path / "model.png")
    assert _read_png(path).shape[0] > 300  # eight layers stacked


def test_plot_model_without_graphviz_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="graphviz's `dot` is not on PATH"):
        report.plot_model(build_model("functional", (28, 28, 1), 10), tmp_path / "model.png")
    assert not (tmp_path / "model.png").exists()
