"""The course's own scripts, offline: fill Keras' dataset cache from the lab's verified files.

After `invoke data --dataset cifar10` the lecture's unchanged lines

    dataset = tf.keras.datasets.cifar10
    (x_train, y_train), (x_test, y_test) = dataset.load_data()

find the archive in Keras' cache ($KERAS_HOME, else ~/.keras) and never
download. Keras 3.15's loaders (keras/src/datasets/*.py) look for these names
under `<keras home>/datasets/`, and this module links them to the verified
copies in the lab's cache (hard links, or copies across file systems):

| loader | Keras looks for | Keras checks | lab file |
|---|---|---|---|
| cifar10.load_data | `cifar-10-batches-py-target_archive` (extracts it next to itself on every call) | SHA-256 6d958be0... | `cifar-10-python.tar.gz` |
| cifar100.load_data | `cifar-100-python-target_archive` | SHA-256 85cd44d0... | `cifar-100-python.tar.gz` |
| fashion_mnist.load_data | `fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz` | nothing | the same four files |

The SHA-256 Keras checks for CIFAR is the one the lab's registry verified, so
Keras accepts the lab's archive as its own download. MNIST is left out: Keras
reads a single `mnist.npz` checked against its own SHA-256, and the lab holds
MNIST's four IDX files, from which that exact file cannot be rebuilt (a
rebuilt one has another hash, and Keras would then download). torchvision
is not in the lab (on PyPI only its CUDA builds of several GB exist for this
platform), so its `download=True` loaders are not covered.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from classifier.data import Dataset
from classifier.download import dataset_folder, verified_files

# Keras 3.15's cache layout: path under <keras home>/datasets -> the lab's file name.
KERAS_LAYOUT: dict[str, dict[str, str]] = {
    "cifar10": {"cifar-10-batches-py-target_archive": "cifar-10-python.tar.gz"},
    "cifar100": {"cifar-100-python-target_archive": "cifar-100-python.tar.gz"},
    "fashion_mnist": {
        f"fashion-mnist/{name}": name
        for name in ("train-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz",
                     "t10k-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz")
    },
}
NOT_COVERED = {
    "mnist": "keras.datasets.mnist.load_data() reads one mnist.npz checked against its own SHA-256, "
             "which cannot be rebuilt from the IDX files the lab verified; it would download",
}


def keras_home() -> Path:
    """Keras' cache root, found as Keras finds it: $KERAS_HOME, else ~/.keras (or /tmp/.keras if home is read-only)."""
    if "KERAS_HOME" in os.environ:
        return Path(os.environ["KERAS_HOME"])
    base = os.path.expanduser("~")
    return Path(base if os.access(base, os.W_OK) else "/tmp") / ".keras"


def fill_keras_cache(dataset: Dataset, data_dir: Path, home: Path | None = None) -> list[Path]:
    """Make Keras' cache entries for `dataset` the lab's verified files.

    Each entry is a hard link to the verified file (a copy when Keras' cache
    is on another file system), made under a temporary name and renamed into
    place, so a Keras loader never sees half an entry. A hard link rather
    than a symbolic one: it costs no space either, and it cannot dangle when
    the lab's data folder is moved or deleted (a dangling link would make
    Keras download into the vanished folder). An entry Keras downloaded
    itself is replaced by the lab's verified copy.

    Args:
        dataset: the registry entry; a dataset without a Keras layout returns [].
        data_dir: the lab's cache root.
        home: Keras' cache root (default: keras_home()).

    Returns:
        The Keras cache paths that now hold the verified files.

    Raises:
        UserError: the lab's copy is missing or fails verification.
    """
    layout = KERAS_LAYOUT.get(dataset.name)
    if not layout:
        return []
    verified_files(dataset, data_dir)
    folder = dataset_folder(dataset, data_dir).resolve()
    datasets = (home or keras_home()) / "datasets"
    written = []
    for entry, name in layout.items():
        source, target = folder / name, datasets / entry
        target.parent.mkdir(parents=True, exist_ok=True)
        if not (target.exists() and os.path.samefile(target, source)):
            temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
            temporary.unlink(missing_ok=True)
            try:
                try:
                    os.link(source, temporary)
                except OSError:  # another file system (a container's bind mount): copy
                    shutil.copyfile(source, temporary)
                os.replace(temporary, target)
            finally:
                temporary.unlink(missing_ok=True)
        written.append(target)
    return written


def report(dataset: Dataset, written: list[Path]) -> str:
    """The line `invoke data` prints about Keras' cache."""
    if written:
        return (f"keras.datasets.{dataset.name}.load_data() now reads the verified files "
                f"in {written[0].parent} (no download)")
    return f"keras.datasets cache not filled for {dataset.name}: {NOT_COVERED.get(dataset.name, 'Keras has no loader for it')}"
