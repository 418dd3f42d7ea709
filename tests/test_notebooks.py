"""The lecture notebooks run top to bottom and give the numbers of the `invoke train` they name.

    python -m pytest tests/test_notebooks.py -v

Each notebook is executed in a fresh kernel (nbclient) on a few hundred real
Fashion-MNIST images; a cell that raises fails the test with the cell's error,
and no cell may show a student a red stderr box (a log line, a warning) or a
value's repr that the lecture does not print. Notebooks 02 and 03 state
at the top the `invoke train` command that gives the same numbers: the test
runs it and compares the weights' SHA-256 with the notebook's run record.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nbclient
import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager

from classifier.machinery import numerics
from conftest import ROOT, require_torch, run_folder_from, run_invoke

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
LECTURE = ["01_tensor_basics", "02_keras_classifier", "03_advanced_classifier", "04_pytorch_classifier"]
SMALL = {"NOTEBOOK_LIMIT": "600", "NOTEBOOK_EPOCHS": "1"}


def test_the_lecture_notebooks_are_there():
    assert LECTURE == [path.stem for path in NOTEBOOKS][: len(LECTURE)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebooks_are_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.parametrize("name, snippets", [
    # Where a notebook departs from the course's scripts, a markdown cell says why.
    ("01_tensor_basics", ["`tf_tensor.py`", "tf.zeros((h, w))", "(None, None)"]),
    ("02_keras_classifier", ["UserWarning: Do not pass an input_shape/input_dim argument to a layer",
                             "ValueError: Received an invalid value for units","model.add(layers.Conv2D(", "keras.Sequential([", "model.compile(", "model.fit(",
                             "model.evaluate(", "model.predict(", "np.sum(predicts[:5], axis=1)", "model.summary()"]),
    ("03_advanced_classifier", ["x = layers.Conv2D(", "tf.data.Dataset.from_tensor_slices(", ".shuffle(",
                                "@tf.function", "tf.GradientTape()", "tape.gradient(", "apply_gradients(",
                                "self.model(x)"]),
    ("04_pytorch_classifier", ["class TorchClsfModel(nn.Module):", "def forward(self, x):", "F.relu(self.conv1(x))",
                               "nn.Sequential(", "np.transpose(images, (0, 3, 1, 2))", "* 2.0 - 1.0",
                               "DataLoader(TensorDataset(x, y), batch_size=self.batch_size, shuffle=True",
                               "torch.optim.RMSprop(self.model.parameters(), lr=0.001)", "nn.CrossEntropyLoss()",
                               "self.optimizer.zero_grad()", "loss.backward()", "self.optimizer.step()",
                               "x = F.dropout(x) if", "return F.softmax(self.fc2(x), dim=1)",
                               "class TorchClsfModelUsingSequential(nn.Module):", "self.conv_relu_pool1 = nn.Sequential(",
                               "conv → pool → relu", "max(relu(a), relu(b)) == relu(max(a, b))", "num_workers=2"]),
])
def test_the_lecture_code_is_written_out_in_the_cells(name, snippets):
    source = "\n".join(cell.source for cell in nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4).cells)
    missing = [snippet for snippet in snippets if snippet not in source]
    assert not missing
    # The lecture's code is in the cells, not taken from the package (tests/test_layers.py: notebooks import only lab).
    assert "make_trainer" not in source and "classifier.lecture" not in source and "classifier.machinery" not in source


def execute(path: Path, tmp_path: Path, monkeypatch, fashion_source) -> tuple[str, list]:
    """Run a notebook in a fresh kernel; returns (all its output text, the outputs a student should not see).

    Those are every stderr stream (log lines, warnings, TensorFlow's C++ notices)
    and every cell's value shown as a repr (Out[n]): the lecture's scripts print
    what they show, so a cell ends in a print, a picture or `;`.
    """
    for key, value in {**SMALL, "NOTEBOOK_DATA_SOURCE": str(fashion_source),
                       "CLASSIFIER_DATA_DIR": str(tmp_path / "data"), "CLASSIFIER_RUNS_DIR": str(tmp_path / "runs"),
                       "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    notebook = nbformat.read(path, as_version=4)
    # The kernel the notebook names, as JupyterLab and nbclient pick it: "pytorch" for 04 (in the GPU
    # image a separate environment), "python3" for the others.
    kernel = notebook.metadata.kernelspec.name
    if kernel not in KernelSpecManager().find_kernel_specs():
        pytest.fail(f"{path.name} names the Jupyter kernel {kernel!r}, which this environment does not have: "
                    "./setup.sh installs it (python -m ipykernel install --sys-prefix --name pytorch ...)")
    client = nbclient.NotebookClient(notebook, timeout=900, resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    text = "\n".join(output.get("text", "") + str(output.get("data", {}).get("text/plain", "")) for output in outputs)
    images = sum("image/png" in output.get("data", {}) for output in outputs)
    noise = [output["text"] for output in outputs if output.get("name") == "stderr"]
    noise += [f"Out: {output['data'].get('text/plain')}" for output in outputs if output.output_type == "execute_result"]
    return text + f"\n[{images} images]", noise


# Executing a notebook starts a kernel that imports TensorFlow (15 s) and trains: slow. The checks of the
# stored notebooks and the progress-bar kernel (no TensorFlow, 2 s) are quick.
@pytest.mark.slow
def test_tensor_basics_runs_and_shows_the_lecture_output(tmp_path, monkeypatch, fashion_source):
    text, noise = execute(ROOT / "notebooks" / "01_tensor_basics.ipynb", tmp_path, monkeypatch, fashion_source)
    assert noise == []
    for expected in ("Type of every element: <dtype: 'int32'>", "Number of axes (=Rank): 3",
                     "Shape of tensor: (2, 2, 3)", "Total number of elements:  12", "TypeError:",
                     "tensor_a[0, 0]: [1 2 3]  tensor_b[0, 0]: [2 3 4]", "tracing: x.shape = (None, 3)",
                     "batch of 7: 7"):
        assert expected in text, expected


@pytest.mark.parametrize("name, flags", [
    ("02_keras_classifier", ("--model", "sequential_add", "--trainer", "fit")),
    ("03_advanced_classifier", ("--model", "functional", "--trainer", "tape")),
    ("04_pytorch_classifier", ("--model", "torch_module", "--trainer", "torch")),
])
@pytest.mark.slow
def test_notebook_runs_and_equals_its_invoke_train(name, flags, tmp_path, monkeypatch, fashion_source, fashion_lab):
    if "torch" in flags:
        require_torch()
        # One OpenMP thread in the kernel and in invoke: torch's spinning threads
        # crawl on 2 shared cores (conftest.one_torch_thread). Not where the numerics
        # mode pins the thread count itself (the lab container's "portable"): the
        # notebook would announce the override on stderr, which a student never sees.
        if "OMP_NUM_THREADS" not in numerics.settings(numerics.resolve(None)):
            monkeypatch.setenv("OMP_NUM_THREADS", "1")
    text, noise = execute(ROOT / "notebooks" / f"{name}.ipynb", tmp_path, monkeypatch, fashion_source)
    assert noise == [], noise
    assert re.search(r"\[(\d+) images\]", text).group(1) != "0", "the sample grid and plots must render"
    notebook_run = run_folder_from(text)
    weights = "model.pt" if "torch" in flags else "model.keras"
    notebook_files = {path.name for path in notebook_run.iterdir()}
    assert {"config.json", "history.json", "metrics.json", "timings.json", "learning_curves.png",
            "confusion_matrix.png", "manifest.json", weights} == notebook_files
    if "torch" in flags:
        assert text.count("parameters: 333526") == 3 and "d loss / d w at w=2: 30.0" in text  # three builds
        assert "two evaluations of the same images agree: False" in text and "lecture weights, dropout off" in text
    notebook_manifest = json.loads((notebook_run / "manifest.json").read_text())

    # The command the notebook's header names, with the same small settings.
    header = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4).cells[0].source
    assert f"invoke train --dataset fashion_mnist --limit 10000 --epochs 3 {' '.join(flags)} --seed 42" in header
    result = run_invoke("train", "--dataset", "fashion_mnist", "--limit", SMALL["NOTEBOOK_LIMIT"],
                        "--epochs", SMALL["NOTEBOOK_EPOCHS"], *flags, "--seed", "42",
                        "--data-dir", str(fashion_lab / "data"), "--runs-dir", str(tmp_path / "invoke-runs"))
    assert result.returncode == 0, result.stderr[-2000:]
    command_run = run_folder_from(result.stdout)
    command_manifest = json.loads((command_run / "manifest.json").read_text())
    assert notebook_manifest["weights_sha256"] == command_manifest["weights_sha256"]
    # lab.py's promise: the evidence of the command's run folder, less what the notebook shows inline (the
    # samples; the model as a picture, or torch's printed module), the checkpoint and the TensorBoard log.
    assert notebook_files == {path.name for path in command_run.iterdir()} - {
        "samples.png", "model.png", "model.txt", "checkpoint", "tensorboard"}
    assert notebook_manifest["data"]["sha256"] == command_manifest["data"]["sha256"]
    assert notebook_manifest["data"]["test"] == command_manifest["data"]["test"] == 10000
    for name in ("metrics.json", "history.json"):
        notebook_values, command_values = (json.loads((run / name).read_text()) for run in (notebook_run, command_run))
        assert set(notebook_values) <= set(command_values), name


def test_a_progress_bar_in_a_notebook_is_a_widget_not_a_warning():
    # lab.load_data's download shows tqdm's bar (tqdm.auto); without ipywidgets
    # it would be a red "TqdmWarning: IProgress not found" box instead.
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from tqdm.auto import tqdm\nfor _ in tqdm(range(3)):\n    pass")])
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
    outputs = notebook.cells[0].outputs
    assert [output for output in outputs if output.get("name") == "stderr"] == []
    assert any("application/vnd.jupyter.widget-view+json" in output.get("data", {}) for output in outputs), outputs
