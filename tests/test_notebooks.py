"""The lecture notebooks run top to bottom on a few hundred Fashion-MNIST images.

    python -m pytest tests/test_notebooks.py -v       # needs the lab extras: pip install -r requirements/lab.lock

Each notebook is executed in a fresh kernel (nbclient) with small settings in
its environment; a cell that raises fails the test with the cell's error.
The lab image has nbclient and ipykernel; a host without them skips.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install -r requirements/lab.lock)")
nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install -r requirements/lab.lock)")
pytest.importorskip("ipykernel", reason="ipykernel is not installed (pip install -r requirements/lab.lock)")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

pytestmark = pytest.mark.slow


def _outputs_text(notebook) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.append(str(output.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def test_there_are_three_lecture_notebooks():
    assert [path.name for path in NOTEBOOKS] == [
        "01_tensor_basics.ipynb", "02_keras_classifier.ipynb", "03_advanced_classifier.ipynb",
    ]


def test_notebooks_are_stored_without_outputs():
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert code and all(not cell.outputs and cell.execution_count is None for cell in code), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_on_small_data(path, fashion_source, tmp_path, monkeypatch):
    # The kernel inherits this process's environment.
    monkeypatch.setenv("NOTEBOOK_LIMIT", "600")
    monkeypatch.setenv("NOTEBOOK_EPOCHS", "1")
    monkeypatch.setenv("NOTEBOOK_DATA_SOURCE", str(fashion_source))
    monkeypatch.setenv("CLASSIFIER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CLASSIFIER_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))

    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()

    text = _outputs_text(notebook)
    if path.stem == "01_tensor_basics":
        assert "'immutable': True" in text and "batch of 7: 7" in text
    else:
        assert "test accuracy" in text
        output = tmp_path / "runs" / "notebooks" / path.stem
        assert {"samples.png", "learning_curves.png", "confusion_matrix.png"} & {p.name for p in output.iterdir()}
        assert (output / "confusion_matrix.png").stat().st_size > 0
