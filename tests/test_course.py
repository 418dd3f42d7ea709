"""`invoke course SCRIPT`: the course's own lines, unchanged, offline: TensorFlow's through its legacy Keras,
PyTorch's in the PyTorch environment (torchvision)."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import textwrap
from importlib.util import find_spec
from pathlib import Path

import pytest

from conftest import (
    NO_NETWORK,
    NO_PROXY,
    ROOT,
    cifar_member_md5s,
    make_cifar_archive,
    run_invoke,
    sha256_bytes,
    torchvision_md5_lines,
)

# The published SHA-256 tf_keras checks for CIFAR-100; a generated archive stands in under its own hash.
_PUBLISHED_CIFAR100 = "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"

# What the test puts before the lecture's lines: no network, and the generated archive's hash accepted.
_PRELUDE = NO_NETWORK + '''
import os

if os.environ.get("TF_USE_LEGACY_KERAS") == "1":
    from tf_keras.src.utils import data_utils as checker
else:  # the control run, in Keras 3
    from keras.src.utils import file_utils as checker

_validate = checker.validate_file
checker.validate_file = lambda path, file_hash, *args, **kwargs: _validate(
    path, {substitute!r}.get(file_hash, file_hash), *args, **kwargs)
'''

# The lecture's lines, as the note prints them (create_model unchanged); the note's
# load_dataset with CIFAR-100, whose loader takes an archive of any size.
_LECTURE = '''
import tensorflow as tf
from tensorflow import keras
from tensorflow.keras import layers
import numpy as np

dataset = tf.keras.datasets.cifar100
(x_train, y_train), (x_test, y_test) = dataset.load_data()
x_train, x_test = x_train / 255.0, x_test / 255.0
y_train, y_test = y_train[:, 0], y_test[:, 0]
print(f"Load cifar100 dataset:", x_train.shape, y_train.shape, x_test.shape, y_test.shape)

def create_model(dataset, use_add=True):
    x, y = dataset
    input_shape = tf.shape(x)[1:].numpy()
    num_class = tf.reduce_max(y).numpy() + 1
    print(f"[create_model] input shape={input_shape}, num_class={num_class}")

    if use_add:
        model = keras.Sequential(name="tf-classifier")
        model.add(layers.Input(shape=input_shape))
        model.add(layers.Conv2D(filters=32, kernel_size=3, padding="same", activation="relu", name="conv1"))
        model.add(layers.MaxPool2D(pool_size=(2, 2), name="pooling1"))
        model.add(layers.Conv2D(filters=64, kernel_size=3, padding="same", activation="relu", name="conv2"))
        model.add(layers.MaxPool2D(pool_size=(2, 2), name="pooling2"))
        model.add(layers.Flatten(name="flatten"))
        model.add(layers.Dense(units=100, activation="relu", name="dense1"))
        model.add(keras.layers.Dropout(0.2))
        model.add(layers.Dense(units=num_class, activation="softmax", name="dense2"))
    else:
        model = keras.Sequential([
            layers.Conv2D(filters=32, kernel_size=3, padding="same", activation="relu", input_shape=input_shape, name="conv1"),
            layers.MaxPool2D(pool_size=(2, 2), name="pooling1"),
            layers.Conv2D(filters=64, kernel_size=3, padding="same", activation="relu", name="conv2"),
            layers.MaxPool2D(pool_size=(2, 2), name="pooling2"),
            layers.Flatten(name="flatten"),
            layers.Dense(units=100, activation="relu", name="dense1"),
            keras.layers.Dropout(0.2),
            layers.Dense(units=num_class, activation="softmax", name="dense2"),
            ],
            name="tf-classifier")
    model.summary()
    keras.utils.plot_model(model, "tf-clsf-model.png")
    return model

for use_add in (True, False):
    model = create_model((x_train, y_train), use_add)
    print("predict:", model.predict(x_test[:3], verbose=0).shape)
'''


@pytest.fixture
def course_folder(tmp_path, monkeypatch):
    """A folder holding the lecture's lines as a script, after `invoke data` imported a CIFAR-100 archive.

    Keras' cache is tmp/.keras, which tf_keras finds as ~/.keras with HOME=tmp. Yields (folder, script, env).
    """
    from classifier.machinery import datasets as data
    from classifier.commands.data import data_command

    source = tmp_path / "usb"
    source.mkdir()
    published = data.DATASETS["cifar100"]
    blob = make_cifar_archive(source / published.files[0].name, kind="cifar100", per_batch=12, num_test=16,
                              compresslevel=1)
    monkeypatch.setitem(data.DATASETS, "cifar100", dataclasses.replace(
        published, files=(data.DataFile(published.files[0].name, sha256_bytes(blob), len(blob)),)))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / ".keras"))
    data_command("cifar100", data_dir=str(tmp_path / "data"), source=str(source))
    assert (tmp_path / ".keras" / "datasets" / "cifar-100-python.tar.gz").is_file()  # tf_keras' name for it

    folder = tmp_path / "01_classifiers"
    folder.mkdir()
    script = folder / "lecture_lines.py"
    script.write_text(textwrap.dedent(_PRELUDE).format(substitute={_PUBLISHED_CIFAR100: sha256_bytes(blob)})
                      + _LECTURE)
    env = {"HOME": str(tmp_path), "KERAS_HOME": str(tmp_path / ".keras"), **NO_PROXY}
    return folder, script, env


def test_the_lectures_create_model_runs_unchanged_through_invoke_course(course_folder):
    if find_spec("tf_keras") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must install requirements/course.lock (setup.sh does)")
        pytest.skip(f"tf_keras is not installed ({'pip install --no-deps --require-hashes -r requirements/course.lock'})")
    folder, script, env = course_folder
    result = subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), "course", script.name], cwd=folder,
                            env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "NETWORK ATTEMPT" not in result.stderr
    assert "Load cifar100 dataset: (60, 32, 32, 3) (60,) (16, 32, 32, 3) (16,)" in result.stdout
    assert result.stdout.count("[create_model] input shape=[32 32  3], num_class=") == 2
    assert result.stdout.count("predict: (3, ") == 2
    assert (folder / "tf-clsf-model.png").stat().st_size > 1000  # written where the script ran


def test_without_legacy_keras_the_same_lines_fail_on_keras_3(course_folder):
    """The control: `python SCRIPT` in the lab's Keras 3 dies where the issue says."""
    folder, script, env = course_folder
    environment = {key: value for key, value in {**os.environ, **env}.items() if key != "TF_USE_LEGACY_KERAS"}
    result = subprocess.run([sys.executable, script.name], cwd=folder, env=environment, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode != 0
    assert "Received an invalid value for `units`" in result.stderr
    assert "NETWORK ATTEMPT" not in result.stderr  # Keras 3 read the lab's copy too


def test_a_missing_script_is_one_line(tmp_path):
    result = run_invoke("course", str(tmp_path / "tf_classifier_basic.py"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"error: {tmp_path / 'tf_classifier_basic.py'} is not a file; give the path of "
                                     "a course script, e.g. detlec/01_classifiers/tf_classifier_basic.py")


def test_script_arguments_with_an_unclosed_quote_are_one_line(tmp_path):
    script = tmp_path / "tf_tensor.py"
    script.write_text("print('ran')\n")
    result = run_invoke("course", str(script), "--args", "--name 'unclosed")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "ran" not in result.stdout
    assert result.stderr.strip() == ("error: --args \"--name 'unclosed\" cannot be split into words "
                                     "(No closing quotation); quote it as a shell would")


# --- PyTorch: pt_classifier.py -------------------------------------------------------------------

# The lines of the course's pt_classifier.py that the lab must run as they are: its imports (torchvision and
# its transforms), the torchvision loader with root='./data' and download=True, the channels-first [-1, 1]
# arrays, the network with softmax into CrossEntropyLoss, a DataLoader with two worker processes, RMSprop,
# the zero_grad / backward / step loop for the script's fixed 5 epochs, validation and evaluation.
_PT_CLASSIFIER = '''
import torch
import torchvision
import torchvision.transforms as transforms
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
import numpy as np

trainset = torchvision.datasets.CIFAR10(root='./data', train=True, download=True)
testset = torchvision.datasets.CIFAR10(root='./data', train=False, download=True)
x_train = np.transpose(np.array(trainset.data), (0, 3, 1, 2)) / 255.0 * 2. - 1.
y_train = np.array(trainset.targets)
x_test = np.transpose(np.array(testset.data), (0, 3, 1, 2)) / 255.0 * 2. - 1.
y_test = np.array(testset.targets)
print("Load cifar10 dataset:", x_train.shape, y_train.shape, x_test.shape, y_test.shape)


class TorchClsfModel(nn.Module):
    def __init__(self):
        super(TorchClsfModel, self).__init__()
        self.conv1 = nn.Conv2d(in_channels=3, out_channels=32, kernel_size=3, padding=1)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(64 * 8 * 8, 100)
        self.fc2 = nn.Linear(100, 10)

    def forward(self, x):
        x = self.pool1(F.relu(self.conv1(x)))
        x = self.pool2(F.relu(self.conv2(x)))
        x = x.view(-1, 64 * 8 * 8)
        x = F.dropout(F.relu(self.fc1(x)))
        return F.softmax(self.fc2(x), dim=1)


model = TorchClsfModel()
loss_object = nn.CrossEntropyLoss()
optimizer = optim.RMSprop(model.parameters(), lr=0.001)
x, y = torch.from_numpy(x_train).float(), torch.from_numpy(y_train)
trainlen = int(x.shape[0] * (1 - 0.2))
trainset = torch.utils.data.TensorDataset(x[:trainlen], y[:trainlen])
trainloader = torch.utils.data.DataLoader(trainset, batch_size=32, shuffle=True, num_workers=2)
for epoch in range(5):
    for x_batch, y_batch in trainloader:
        optimizer.zero_grad()
        loss = loss_object(model(x_batch), y_batch)
        loss.backward()
        optimizer.step()
    y_pred = model(x[trainlen:])
    accuracy = torch.mean((torch.argmax(y_pred, dim=1) == y[trainlen:]).float())
    print(f"[Training] epoch={epoch}, val_loss={loss_object(y_pred, y[trainlen:]):1.4f}, val_accuracy={accuracy:1.4f}")

y_pred = model(torch.from_numpy(x_test).float())
print("  check probability:", torch.sum(y_pred[:5], dim=1))
print(f"  accuracy={torch.mean((torch.argmax(y_pred, dim=1) == torch.from_numpy(y_test)).float()):1.4f}")
'''


def _torch_environment_or_skip() -> str:
    """The PyTorch environment's Python as `invoke course` finds it; a skip without one (a failure in CI)."""
    from classifier.commands.course import torch_python
    from classifier.config import UserError

    try:
        return torch_python("pt_classifier.py")
    except UserError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must build the PyTorch environment (.ci/run makes .venv-torch): {error}")
        pytest.skip(str(error))


def test_the_courses_pytorch_lines_run_unchanged_through_invoke_course(tmp_path, monkeypatch, capsys, http_root):
    """pt_classifier.py's lines after `invoke data --dataset cifar10` from a classroom mirror, with torchvision."""
    from classifier.commands.data import data_command
    from classifier.machinery import datasets as data

    _torch_environment_or_skip()
    served, url, requests = http_root
    published = data.DATASETS["cifar10"]
    archive = served / published.files[0].name
    blob = make_cifar_archive(archive, kind="cifar10", per_batch=12, num_test=16, compresslevel=1, meta=True)
    monkeypatch.setitem(data.DATASETS, "cifar10", dataclasses.replace(
        published, files=(data.DataFile(archive.name, sha256_bytes(blob), len(blob)),)))
    folder = tmp_path / "detlec" / "01_classifiers"
    data_command("cifar10", data_dir=str(tmp_path / "data"), mirror=url, torchvision_root=str(folder / "data"))
    assert requests == [f"/{archive.name}"]
    assert capsys.readouterr().out.splitlines()[-1].startswith("torchvision.datasets.CIFAR10(root=")

    script = folder / "pt_classifier.py"
    script.write_text(NO_NETWORK + torchvision_md5_lines("CIFAR10", cifar_member_md5s(archive)) + _PT_CLASSIFIER)
    result = subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), "course", script.name], cwd=folder,
                            env={**os.environ, **NO_PROXY}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "NETWORK ATTEMPT" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Load cifar10 dataset: (60, 3, 32, 32) (60,) (16, 3, 32, 32) (16,)"
    assert [line.split(",")[0] for line in lines[1:6]] == [f"[Training] epoch={epoch}" for epoch in range(5)]
    # The softmax rows sum to 1 (torch prints them as 1. or 1.0000, whichever all five need).
    assert lines[6].startswith("  check probability: tensor([")
    sums = [float(value) for value in re.findall(r"\d+\.\d*", lines[6])]
    assert len(sums) == 5 and all(abs(value - 1) < 1e-4 for value in sums), lines[6]
    assert 0 <= float(lines[7].split("=")[1]) <= 1


@pytest.mark.parametrize("variant, expected", [
    ("", "error: pt_classifier.py imports torch/torchvision, and no Python here has torchvision; make the PyTorch "
         "environment with: python3 -m venv .venv-torch && .venv-torch/bin/pip install --require-hashes "
         "-r requirements/torch-gpu.lock (or set LAB_TORCH_PYTHON to a Python that has it)"),
    ("cpu", "error: pt_classifier.py imports torch/torchvision, and this CPU image's PyTorch (the CPU build) has no "
            "torchvision (its CPU build is only on PyTorch's own index); run the script on the host (after: "
            "python3 -m venv .venv-torch && .venv-torch/bin/pip install --require-hashes "
            "-r requirements/torch-gpu.lock) or in the GPU image (invoke build --variant gpu)"),
])
def test_a_pytorch_script_without_the_pytorch_environment_says_how_to_make_it(tmp_path, monkeypatch, variant,
                                                                                expected):
    """Where no Python has torchvision (on the host, or in the CPU image), one line says what to do."""
    from classifier.commands import course
    from classifier.config import UserError

    script = tmp_path / "pt_classifier.py"
    script.write_text("import torchvision\nprint('ran')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LAB_TORCH_PYTHON", raising=False)
    monkeypatch.setenv("LAB_VARIANT", variant)
    # No .venv-torch, no /opt/venv-torch; this Python, whose CPU torch cannot load PyPI's torchvision, has none.
    monkeypatch.setattr(course, "TORCH_PYTHONS", (tmp_path / ".venv-torch" / "bin" / "python", Path(sys.executable)))
    if course.has_torchvision(sys.executable):
        pytest.skip("this Python has torchvision")
    with pytest.raises(UserError) as raised:
        course.run_script(script.name)
    assert f"error: {raised.value}" == expected


def test_a_wrong_lab_torch_python_is_one_line(tmp_path):
    script = tmp_path / "pt_classifier.py"
    script.write_text("from torch import nn\nprint('ran')\n")
    result = run_invoke("course", str(script), env={"LAB_TORCH_PYTHON": str(tmp_path / "missing" / "python")})
    assert result.returncode == 2 and "ran" not in result.stdout and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith(f"error: LAB_TORCH_PYTHON={tmp_path / 'missing' / 'python'} is not a "
                                            "Python with torch; point it at the PyTorch environment's")


@pytest.mark.parametrize("name, expected", [
    ("notes.txt", "is not a Python script (.py); give a course script, e.g. "
                  "detlec/01_classifiers/tf_classifier_basic.py"),
    ("tf_classifier.ipynb", "is a notebook, not a script: open it in JupyterLab (invoke lab), or give the course's "
                            ".py script"),
])
def test_a_file_that_is_not_a_python_script_is_one_line(tmp_path, name, expected):
    script = tmp_path / name
    script.write_text('{"cells": []}\nprint("ran")\n', encoding="utf-8")
    result = run_invoke("course", str(script))
    assert result.returncode == 2 and "ran" not in result.stdout, result.stderr
    assert result.stderr.splitlines() == [f"error: {script} {expected}"]


def test_a_script_importing_only_torch_runs_where_torch_is(tmp_path):
    """No torchvision needed: the first Python with torch runs it (here the lab's own, whose torch is installed)."""
    pytest.importorskip("torch")
    script = tmp_path / "torch_only.py"
    script.write_text("import sys\nimport torch\nprint('ran', torch.__name__, sys.executable)\n", encoding="utf-8")
    result = run_invoke("course", str(script), env={"LAB_TORCH_PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"ran torch {sys.executable}"]
    without = run_invoke("course", str(script), env={"LAB_TORCH_PYTHON": ""})
    assert without.returncode == 0, without.stderr
    assert without.stdout.startswith("ran torch ")
