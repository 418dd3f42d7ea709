"""The course's own loading lines (Keras' `load_data()`, torchvision's `download=True`), unchanged, offline."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import io
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import (
    NO_NETWORK,
    NO_PROXY,
    cifar_member_md5s,
    make_cifar_archive,
    run_invoke,
    sha256_bytes,
    torchvision_md5_lines,
)

# Published SHA-256s that Keras 3.15 checks for CIFAR; a generated archive stands in under its own hash.
_KERAS_CIFAR_HASHES = {
    "cifar10": "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    "cifar100": "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
}

# The Keras child: the lecture's lines.
_CHILD = NO_NETWORK + '''
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
    environment = {**os.environ, "KERAS_HOME": str(keras_home), **NO_PROXY}
    return subprocess.run([sys.executable, "-c", script, str(output)], env=environment,
                          capture_output=True, text=True, timeout=300)


def _assert_same_as_lab(arrays_path, dataset, data_dir):
    """The arrays a course loader gave (the child saved them) equal the lab's loader's; returns them."""
    from classifier.machinery.datasets import load_arrays
    from classifier.machinery.download import dataset_folder

    (train_images, train_labels), (test_images, test_labels) = load_arrays(dataset, dataset_folder(dataset, data_dir))
    arrays = np.load(arrays_path)
    if dataset.image_shape[2] == 1:  # both give MNIST-style images without the channel axis
        train_images, test_images = train_images[..., 0], test_images[..., 0]
    # Images HWC uint8, as the course transposes them for torch.
    np.testing.assert_array_equal(arrays["x_train"], train_images)
    np.testing.assert_array_equal(arrays["x_test"], test_images)
    # Keras gives CIFAR's labels as (N, 1), which the lecture flattens with y_train[:, 0]; torchvision as (N,).
    for key, labels in (("y_train", train_labels), ("y_test", test_labels)):
        np.testing.assert_array_equal(arrays[key][:, 0] if arrays[key].ndim == 2 else arrays[key], labels)
    return arrays


# Keras' cifar10 loader fills arrays of exactly 10,000 images per batch file, so that
# archive is full size (128 MB, about 25 s to make); CIFAR-100's loader takes any size.
@pytest.mark.parametrize("name, per_batch, num_test", [
    pytest.param("cifar10", 10000, 10000, marks=pytest.mark.slow),
    ("cifar100", 12, 16),
])
def test_lecture_load_data_reads_the_labs_cifar_offline(tmp_path, monkeypatch, capsys, name, per_batch, num_test):
    from classifier.machinery import datasets as data
    from classifier.commands.data import data_command

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
    from classifier.machinery.datasets import DATASETS

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
    from classifier.machinery import course_loaders
    from classifier.machinery.download import import_from

    dataset, source = tiny_dataset
    import_from(dataset, tmp_path / "data", source)
    monkeypatch.setitem(course_loaders.KERAS_LAYOUT, "tiny", {f"tiny/{f.name}": f.name for f in dataset.files})
    stale = tmp_path / "keras" / "datasets" / "tiny" / dataset.files[0].name
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a download")

    written = course_loaders.fill_keras_cache(dataset, tmp_path / "data", home=tmp_path / "keras")
    assert len(written) == 4 and stale in written
    for path in written:
        assert os.path.samefile(path, tmp_path / "data" / "tiny" / path.name)
    assert course_loaders.fill_keras_cache(dataset, tmp_path / "data", home=tmp_path / "keras") == written
    assert not [p.name for p in stale.parent.iterdir() if p.name.startswith(".")]


def test_unverified_lab_files_are_not_handed_to_keras(tiny_dataset, tmp_path, monkeypatch):
    from classifier.machinery import course_loaders
    from classifier.config import UserError
    from classifier.machinery.download import import_from

    dataset, source = tiny_dataset
    import_from(dataset, tmp_path / "data", source)
    monkeypatch.setitem(course_loaders.KERAS_LAYOUT, "tiny", {f"tiny/{f.name}": f.name for f in dataset.files})
    (tmp_path / "data" / "tiny" / dataset.files[0].name).write_bytes(b"damaged")
    with pytest.raises(UserError, match="is not ready"):
        course_loaders.fill_keras_cache(dataset, tmp_path / "data", home=tmp_path / "keras")
    assert not (tmp_path / "keras" / "datasets" / "tiny").exists()


def test_mnist_says_why_keras_cannot_be_served():
    from classifier.machinery import course_loaders
    from classifier.machinery.datasets import DATASETS

    assert course_loaders.fill_keras_cache(DATASETS["mnist"], "/nonexistent") == []
    assert "mnist.npz" in course_loaders.keras_report(DATASETS["mnist"], [])


# --- torchvision ---------------------------------------------------------------------------------

# The course's lines from detlec's 01_classifiers/pt_classifier.py, as it writes them (root='./data' relative
# to the folder the script runs in), in a child without network.
_TORCHVISION_LINES = '''
import numpy as np
import torchvision

trainset = torchvision.datasets.{name}(root='./data', train=True, download=True)
testset = torchvision.datasets.{name}(root='./data', train=False, download=True)

np.savez(sys.argv[1], x_train=np.array(trainset.data), y_train=np.array(trainset.targets),
         x_test=np.array(testset.data), y_test=np.array(testset.targets))
'''


def _torchvision_python() -> str:
    """A Python whose torchvision imports: this one, else $LAB_TORCH_PYTHON; else the test skips."""
    python = _find_torchvision_python()
    if not python:
        pytest.skip("no Python here imports torchvision (it is in requirements/torch-gpu.lock; "
                    "set LAB_TORCH_PYTHON to such an environment's python, e.g. .venv-torch/bin/python)")
    return python


@functools.cache
def _find_torchvision_python() -> str:
    """The first Python that imports torchvision, or "" (importing CUDA torch takes seconds: asked once).

    The CPU lab's torch (2.13.0+cpu) cannot load PyPI's torchvision, a CUDA
    build (its _C.so needs libtorch_cuda.so), and PyTorch's CPU build of
    torchvision is not reachable from here; torchvision is in the torch-gpu
    lock, whose environment (.venv-torch, see setup.sh) CI builds and names
    in $LAB_TORCH_PYTHON. Not found by its path: inside the lab's containers
    the checkout's .venv-torch points at the host's Python.
    """
    for python in filter(None, [sys.executable, os.environ.get("LAB_TORCH_PYTHON", "")]):
        if Path(python).exists() and subprocess.run([python, "-c", "import torchvision"],
                                                    capture_output=True, timeout=120).returncode == 0:
            return python
    if os.environ.get("CI") == "true" and os.environ.get("LAB_TORCH_PYTHON"):
        pytest.fail(f"LAB_TORCH_PYTHON={os.environ['LAB_TORCH_PYTHON']} does not import torchvision")
    return ""


def _torchvision_offline(python: str, name: str, course_folder, output, generated=None) -> subprocess.CompletedProcess:
    """Run the course's torchvision lines in `course_folder` (its ./data) in a child with the network disabled."""
    # A generated archive cannot have the published MD5s: torchvision checks the generated files' instead.
    substitute = torchvision_md5_lines(name, generated) if generated else ""
    script = NO_NETWORK + substitute + _TORCHVISION_LINES.format(name=name)
    environment = {**os.environ, **NO_PROXY}
    return subprocess.run([python, "-c", script, str(output)], cwd=course_folder, env=environment,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name, class_name", [("cifar10", "CIFAR10"), ("cifar100", "CIFAR100")])
def test_course_torchvision_lines_read_the_labs_cifar_offline(tmp_path, monkeypatch, capsys, name, class_name):
    from classifier.machinery import datasets as data
    from classifier.commands.data import data_command

    python = _torchvision_python()
    source = tmp_path / "usb"
    source.mkdir()
    published = data.DATASETS[name]
    blob = make_cifar_archive(source / published.files[0].name, kind=name, per_batch=12, num_test=16, meta=True)
    monkeypatch.setitem(data.DATASETS, name, dataclasses.replace(
        published, files=(data.DataFile(published.files[0].name, sha256_bytes(blob), len(blob)),)))
    course = tmp_path / "detlec" / "01_classifiers"  # where the student runs pt_classifier.py

    data_command(name, data_dir=str(tmp_path / "data"), source=str(source), torchvision_root=str(course / "data"))
    line = capsys.readouterr().out.splitlines()[-1]
    folder = course / "data" / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    assert line == (f"torchvision.datasets.{class_name}(root='{course / 'data'}', download=True) "
                    f"now reads the verified files in {folder} (no download)")

    before = {path.name: os.stat(path).st_mtime_ns for path in folder.iterdir()}

    result = _torchvision_offline(python, class_name, course, tmp_path / "arrays.npz",
                                  generated=cifar_member_md5s(source / published.files[0].name))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "NETWORK ATTEMPT" not in result.stderr
    # torchvision accepted the laid-out folder as it was: it did not fall back to extracting the archive again.
    assert {path.name: os.stat(path).st_mtime_ns for path in folder.iterdir()} == before
    arrays = _assert_same_as_lab(tmp_path / "arrays.npz", data.DATASETS[name], tmp_path / "data")
    assert arrays["x_train"].shape == (60, 32, 32, 3) and arrays["x_test"].shape == (16, 32, 32, 3)


def test_course_torchvision_line_reads_real_fashion_mnist_offline(tmp_path, fashion_source):
    from classifier.machinery.datasets import DATASETS

    python = _torchvision_python()
    course = tmp_path / "course"
    result = run_invoke("data", "--dataset", "fashion_mnist", "--from", str(fashion_source),
                        "--data-dir", str(tmp_path / "data"), "--torchvision-root", str(course / "data"))
    assert result.returncode == 0, result.stderr
    assert (f"torchvision.datasets.FashionMNIST(root='{course / 'data'}', download=True) now reads the verified "
            f"files in {course / 'data' / 'FashionMNIST'} (no download)") in result.stdout
    raw = course / "data" / "FashionMNIST" / "raw"
    for file in DATASETS["fashion_mnist"].files:  # torchvision's own download leaves the .gz beside each file
        assert os.path.samefile(raw / file.name, tmp_path / "data" / "fashion_mnist" / file.name)

    loaded = _torchvision_offline(python, "FashionMNIST", course, tmp_path / "arrays.npz")
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert "NETWORK ATTEMPT" not in loaded.stderr
    arrays = _assert_same_as_lab(tmp_path / "arrays.npz", DATASETS["fashion_mnist"], tmp_path / "data")
    assert arrays["x_train"].shape == (60000, 28, 28) and arrays["x_test"].shape == (10000, 28, 28)


def test_without_the_lab_files_torchvision_would_download(tmp_path):
    """The control: the same child with an empty root tries the network and fails, so the guard works."""
    python = _torchvision_python()
    result = _torchvision_offline(python, "FashionMNIST", tmp_path, tmp_path / "arrays.npz")
    assert result.returncode != 0
    assert "NETWORK ATTEMPT" in result.stderr
    assert not (tmp_path / "arrays.npz").exists()


def _cifar_in_lab(tmp_path, monkeypatch, name="cifar10"):
    """A generated CIFAR archive imported into the lab's cache under the registry's name; returns (dataset, blob)."""
    from classifier.machinery import datasets as data
    from classifier.machinery.download import import_from

    source = tmp_path / "usb"
    source.mkdir()
    published = data.DATASETS[name]
    blob = make_cifar_archive(source / published.files[0].name, kind=name, per_batch=4, num_test=5, meta=True)
    dataset = dataclasses.replace(
        published, files=(data.DataFile(published.files[0].name, sha256_bytes(blob), len(blob)),))
    monkeypatch.setitem(data.DATASETS, name, dataset)
    import_from(dataset, tmp_path / "data", source)
    return dataset, blob


def test_torchvision_layout_is_the_archive_extracted_and_a_second_call_leaves_it_alone(tmp_path, monkeypatch):
    from classifier.machinery import course_loaders

    dataset, blob = _cifar_in_lab(tmp_path, monkeypatch)
    root = tmp_path / "course" / "data"
    laid_out = course_loaders.fill_torchvision_root(dataset, tmp_path / "data", root)
    assert laid_out.rebuilt and laid_out.folder == root / "cifar-10-batches-py"
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    written = {str(p.relative_to(root)): p.read_bytes()
               for p in laid_out.folder.iterdir() if p.name != ".lab-layout.json"}
    assert written == members and len(written) == 7  # five batches, the test batch, batches.meta
    assert os.path.samefile(root / "cifar-10-python.tar.gz", tmp_path / "data" / "cifar10" / "cifar-10-python.tar.gz")

    before = os.stat(laid_out.folder / "data_batch_1").st_ino
    again = course_loaders.fill_torchvision_root(dataset, tmp_path / "data", root)
    assert not again.rebuilt and os.stat(again.folder / "data_batch_1").st_ino == before
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]


@pytest.mark.parametrize("damage", ["flip a byte", "delete a file", "old torchvision's processed cache",
                                    "killed mid-layout"])
def test_a_damaged_or_interrupted_torchvision_layout_is_replaced(tiny_dataset, tmp_path, monkeypatch, damage):
    from classifier.machinery import course_loaders
    from classifier.machinery.download import import_from

    dataset, source = tiny_dataset
    import_from(dataset, tmp_path / "data", source)
    monkeypatch.setitem(course_loaders.TORCHVISION_LAYOUT, "tiny",
                        course_loaders.TorchvisionLayout("Tiny", "Tiny", extracted=False))
    root = tmp_path / "course-data"
    good = course_loaders.fill_torchvision_root(dataset, tmp_path / "data", root)
    raw = good.folder / "raw"
    expected = {p.name: p.read_bytes() for p in raw.iterdir()}
    assert expected["train-images-idx3-ubyte"] == gzip.decompress(expected["train-images-idx3-ubyte.gz"])

    if damage == "flip a byte":
        images = bytearray((raw / "train-images-idx3-ubyte").read_bytes())
        images[100] ^= 0xFF
        (raw / "train-images-idx3-ubyte").write_bytes(bytes(images))
    elif damage == "delete a file":
        (raw / "t10k-labels-idx1-ubyte").unlink()
    elif damage == "old torchvision's processed cache":  # torchvision would read it before raw/
        (good.folder / "processed").mkdir()
        (good.folder / "processed" / "training.pt").write_bytes(b"stale")
        (good.folder / "processed" / "test.pt").write_bytes(b"stale")
    else:  # a kill -9 between building and renaming: a staging folder of a process that is gone, no folder
        finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                                  capture_output=True, text=True)
        os.replace(good.folder, root / f".Tiny.staging-{finished.stdout.strip()}")

    repaired = course_loaders.fill_torchvision_root(dataset, tmp_path / "data", root)
    assert repaired.rebuilt
    assert {p.name: p.read_bytes() for p in (repaired.folder / "raw").iterdir()} == expected
    assert sorted(p.name for p in repaired.folder.iterdir()) == [".lab-layout.json", "raw"]
    assert [p.name for p in root.iterdir()] == ["Tiny"]  # no staging or old folder left behind


def test_an_exception_mid_layout_leaves_the_old_layout_and_no_staging(tiny_dataset, tmp_path, monkeypatch):
    from classifier.machinery import course_loaders
    from classifier.machinery.download import import_from

    dataset, source = tiny_dataset
    import_from(dataset, tmp_path / "data", source)
    monkeypatch.setitem(course_loaders.TORCHVISION_LAYOUT, "tiny",
                        course_loaders.TorchvisionLayout("Tiny", "Tiny", extracted=False))
    root = tmp_path / "course-data"
    good = course_loaders.fill_torchvision_root(dataset, tmp_path / "data", root)
    (good.folder / "raw" / "train-labels-idx1-ubyte").write_bytes(b"damaged")  # makes the next call rebuild
    monkeypatch.setattr(course_loaders.shutil, "copyfileobj", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        course_loaders.fill_torchvision_root(dataset, tmp_path / "data", root)
    assert sorted(p.name for p in root.iterdir()) == ["Tiny"]  # the staging folder is gone
    assert (good.folder / "raw" / "train-labels-idx1-ubyte").read_bytes() == b"damaged"  # the old one, untouched
    monkeypatch.undo()
    monkeypatch.setitem(course_loaders.TORCHVISION_LAYOUT, "tiny",
                        course_loaders.TorchvisionLayout("Tiny", "Tiny", extracted=False))
    assert course_loaders.fill_torchvision_root(dataset, tmp_path / "data", root).rebuilt
    assert (good.folder / "raw" / "train-labels-idx1-ubyte").read_bytes() == gzip.decompress(
        (good.folder / "raw" / "train-labels-idx1-ubyte.gz").read_bytes())


def test_torchvision_folder_that_is_the_labs_own_is_refused(tiny_dataset, tmp_path, monkeypatch):
    """On a case-insensitive disk root/MNIST is the lab's root/mnist: laying it out would replace the verified files."""
    from classifier.machinery import course_loaders
    from classifier.config import UserError
    from classifier.machinery.download import import_from

    dataset, source = tiny_dataset
    import_from(dataset, tmp_path / "data", source)
    monkeypatch.setitem(course_loaders.TORCHVISION_LAYOUT, "tiny",
                        course_loaders.TorchvisionLayout("TINY", "tiny", extracted=False))
    with pytest.raises(UserError, match=r"torchvision's tiny folder would be the lab's own .*give another folder"):
        course_loaders.fill_torchvision_root(dataset, tmp_path / "data", tmp_path / "data")
    assert sorted(p.name for p in (tmp_path / "data" / "tiny").iterdir() if not p.name.startswith(".")) == sorted(
        f.name for f in dataset.files)


def test_a_torchvision_root_that_is_a_file_is_one_line_before_any_download(tmp_path):
    blocker = tmp_path / "data.txt"
    blocker.write_text("not a folder")
    result = run_invoke("data", "--dataset", "cifar10", "--data-dir", str(tmp_path / "d"),
                        "--torchvision-root", str(blocker))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: --torchvision-root {blocker} is a file; "
                                     "give a folder (torchvision's root=)")
    assert not (tmp_path / "d").exists() and blocker.read_text() == "not a folder"
