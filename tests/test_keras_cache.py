"""The lecture's own `load_data()` lines, unchanged, offline, after `invoke data`."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import make_cifar_archive, run_invoke, sha256_bytes

# Published SHA-256s that Keras 3.15 checks for CIFAR; a generated archive stands in under its own hash.
_KERAS_CIFAR_HASHES = {
    "cifar10": "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    "cifar100": "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
}

# The child: no network (every connection attempt raises and is reported), then the lecture's lines.
_CHILD = '''
import socket, sys

def _refuse(*args, **kwargs):
    print("NETWORK ATTEMPT", args[1:2], file=sys.stderr)
    raise OSError("network disabled by the test")

socket.socket.connect = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse

import numpy as np
import tensorflow as tf

SUBSTITUTE = {substitute!r}
if SUBSTITUTE:
    # A generated archive cannot have the published hash: Keras checks it against the generated one instead.
    from keras.src.utils import file_utils

    _validate = file_utils.validate_file
    file_utils.validate_file = lambda path, file_hash, *args, **kwargs: _validate(
        path, SUBSTITUTE.get(file_hash, file_hash), *args, **kwargs)

# The lecture's lines, as the note prints them:
dataset = tf.keras.datasets.{name}
(x_train, y_train), (x_test, y_test) = dataset.load_data()

np.savez(sys.argv[1], x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
'''


def _load_offline(name: str, keras_home, output, substitute=None) -> subprocess.CompletedProcess:
    """Run the lecture's load_data() lines in a child process with the network disabled."""
    script = textwrap.dedent(_CHILD).format(name=name, substitute=substitute or {})
    environment = {**os.environ, "KERAS_HOME": str(keras_home),
                   "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    return subprocess.run([sys.executable, "-c", script, str(output)], env=environment,
                          capture_output=True, text=True, timeout=300)


def _assert_same_as_lab(arrays_path, dataset, data_dir):
    from classifier.data import load_arrays
    from classifier.download import dataset_folder

    (train_images, train_labels), (test_images, test_labels) = load_arrays(dataset, dataset_folder(dataset, data_dir))
    keras_arrays = np.load(arrays_path)
    if dataset.image_shape[2] == 1:  # Keras gives MNIST-style images without the channel axis
        train_images, test_images = train_images[..., 0], test_images[..., 0]
    np.testing.assert_array_equal(keras_arrays["x_train"], train_images)
    np.testing.assert_array_equal(keras_arrays["x_test"], test_images)
    # Keras gives CIFAR's labels as (N, 1), which the lecture flattens with y_train[:, 0].
    np.testing.assert_array_equal(keras_arrays["y_train"].reshape(-1), train_labels)
    np.testing.assert_array_equal(keras_arrays["y_test"].reshape(-1), test_labels)
    return keras_arrays


# Keras' cifar10 loader fills arrays of exactly 10,000 images per batch file, so that
# archive is full size (128 MB, about 25 s to make); CIFAR-100's loader takes any size.
@pytest.mark.parametrize("name, per_batch, num_test", [
    pytest.param("cifar10", 10000, 10000, marks=pytest.mark.slow),
    ("cifar100", 12, 16),
])
def test_lecture_load_data_reads_the_labs_cifar_offline(tmp_path, monkeypatch, capsys, name, per_batch, num_test):
    from classifier import data
    from classifier.commands import data_command

    source = tmp_path / "usb"
    source.mkdir()
    published = data.DATASETS[name]
    blob = make_cifar_archive(source / published.files[0].name, kind=name, per_batch=per_batch, num_test=num_test,
                              compresslevel=1)
    monkeypatch.setitem(data.DATASETS, name, dataclasses.replace(
        published, files=(data.DataFile(published.files[0].name, sha256_bytes(blob), len(blob)),)))
    keras_home = tmp_path / "keras"
    monkeypatch.setenv("KERAS_HOME", str(keras_home))

    data_command(name, data_dir=str(tmp_path / "data"), source=str(source))
    assert f"keras.datasets.{name}.load_data() now reads the verified files" in capsys.readouterr().out

    result = _load_offline(name, keras_home, tmp_path / "arrays.npz",
                           substitute={_KERAS_CIFAR_HASHES[name]: sha256_bytes(blob)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "NETWORK ATTEMPT" not in result.stderr
    arrays = _assert_same_as_lab(tmp_path / "arrays.npz", data.DATASETS[name], tmp_path / "data")
    assert arrays["x_train"].shape == (5 * per_batch, 32, 32, 3) and arrays["x_test"].shape == (num_test, 32, 32, 3)
    assert arrays["y_train"].shape == (5 * per_batch, 1)  # the lecture flattens it with y_train[:, 0]


def test_without_the_lab_files_load_data_would_download(tmp_path):
    """The control: the same child with an empty Keras cache tries the network and fails, so the guard works."""
    result = _load_offline("cifar10", tmp_path / "empty-keras", tmp_path / "arrays.npz")
    assert result.returncode != 0
    assert "NETWORK ATTEMPT" in result.stderr
    assert not (tmp_path / "arrays.npz").exists()


def test_lecture_load_data_reads_real_fashion_mnist_offline(tmp_path, fashion_source):
    from classifier.data import DATASETS

    keras_home = tmp_path / "keras"
    result = run_invoke("data", "--dataset", "fashion_mnist", "--from", str(fashion_source),
                        "--data-dir", str(tmp_path / "data"), env={"KERAS_HOME": str(keras_home)})
    assert result.returncode == 0, result.stderr
    assert f"keras.datasets.fashion_mnist.load_data() now reads the verified files in {keras_home / 'datasets' / 'fashion-mnist'}" in result.stdout
    # Hard links: Keras' entries are the lab's verified files, not copies.
    for path in (keras_home / "datasets" / "fashion-mnist").iterdir():
        assert os.path.samefile(path, tmp_path / "data" / "fashion_mnist" / path.name)

    loaded = _load_offline("fashion_mnist", keras_home, tmp_path / "arrays.npz")
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert "NETWORK ATTEMPT" not in loaded.stderr
    arrays = _assert_same_as_lab(tmp_path / "arrays.npz", DATASETS["fashion_mnist"], tmp_path / "data")
    assert arrays["x_train"].shape == (60000, 28, 28) and arrays["x_test"].shape == (10000, 28, 28)


def test_a_stale_keras_entry_is_replaced_and_a_refill_changes_nothing(tiny_dataset, tmp_path, monkeypatch):
    from classifier import keras_cache
    from classifier.download import import_from

    dataset, source = tiny_dataset
    import_from(dataset, tmp_path / "data", source)
    monkeypatch.setitem(keras_cache.KERAS_LAYOUT, "tiny", {f"tiny/{f.name}": f.name for f in dataset.files})
    stale = tmp_path / "keras" / "datasets" / "tiny" / dataset.files[0].name
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a download")

    written = keras_cache.fill_keras_cache(dataset, tmp_path / "data", home=tmp_path / "keras")
    assert len(written) == 4 and stale in written
    for path in written:
        assert os.path.samefile(path, tmp_path / "data" / "tiny" / path.name)
    assert keras_cache.fill_keras_cache(dataset, tmp_path / "data", home=tmp_path / "keras") == written
    assert not [p.name for p in stale.parent.iterdir() if p.name.startswith(".")]


def test_unverified_lab_files_are_not_handed_to_keras(tiny_dataset, tmp_path, monkeypatch):
    from classifier import keras_cache
    from classifier.config import UserError
    from classifier.download import import_from

    dataset, source = tiny_dataset
    import_from(dataset, tmp_path / "data", source)
    monkeypatch.setitem(keras_cache.KERAS_LAYOUT, "tiny", {f"tiny/{f.name}": f.name for f in dataset.files})
    (tmp_path / "data" / "tiny" / dataset.files[0].name).write_bytes(b"damaged")
    with pytest.raises(UserError, match="is not ready"):
        keras_cache.fill_keras_cache(dataset, tmp_path / "data", home=tmp_path / "keras")
    assert not (tmp_path / "keras" / "datasets" / "tiny").exists()


def test_mnist_says_why_keras_cannot_be_served():
    from classifier import keras_cache
    from classifier.data import DATASETS

    assert keras_cache.fill_keras_cache(DATASETS["mnist"], "/nonexistent") == []
    assert "mnist.npz" in keras_cache.report(DATASETS["mnist"], [])
