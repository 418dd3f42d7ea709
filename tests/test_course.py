"""`invoke course SCRIPT`: the course's own TensorFlow lines, unchanged, through TensorFlow's legacy Keras, offline."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from importlib.util import find_spec

import pytest

from conftest import ROOT, make_cifar_archive, run_invoke, sha256_bytes

# The published SHA-256 tf_keras checks for CIFAR-100; a generated archive stands in under its own hash.
_PUBLISHED_CIFAR100 = "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"

# What the test puts before the lecture's lines: no network, and the generated archive's hash accepted.
_PRELUDE = '''
import socket, sys

def _refuse(*args, **kwargs):
    print("NETWORK ATTEMPT", args[1:2], file=sys.stderr)
    raise OSError("network disabled by the test")

socket.socket.connect = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse

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
    env = {"HOME": str(tmp_path), "KERAS_HOME": str(tmp_path / ".keras"),
           "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
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
                                     "a course script, e.g. ../detlec/01_classifiers/tf_classifier_basic.py")


def test_script_arguments_with_an_unclosed_quote_are_one_line(tmp_path):
    script = tmp_path / "tf_tensor.py"
    script.write_text("print('ran')\n")
    result = run_invoke("course", str(script), "--args", "--name 'unclosed")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "ran" not in result.stdout
    assert result.stderr.strip() == ("error: --args \"--name 'unclosed\" cannot be split into words "
                                     "(No closing quotation); quote it as a shell would")
