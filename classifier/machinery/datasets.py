"""Datasets: the registry and the readers of the published formats.

The registry says where each dataset is published, the SHA-256 of every file
and what the images are. `download.py` fetches and verifies the files; this
module reads the verified files into uint8 NHWC images and 1-D int32 labels;
classifier/lecture/split.py scales and splits them as the lecture's
`load_dataset` does (float32 images in [0, 1]), and loading.py joins the two.

    invoke data --dataset cifar10        # fetch once, verify
    invoke train --dataset cifar10       # loads through load_dataset()
"""

from __future__ import annotations

import gzip
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classifier.config import UserError


@dataclass(frozen=True)
class DataFile:
    name: str  # file name, as published
    sha256: str  # SHA-256 of the file as published
    size: int  # bytes, as published; a smaller file is reported as truncated
    # SHA-256 of the decompressed bytes of a .gz file. A copy that was
    # recompressed (Debian's dataset-fashion-mnist drops gzip's file-name
    # field, for one) holds the same data under another archive hash.
    content_sha256: str = ""


@dataclass(frozen=True)
class Dataset:
    name: str  # registry key, used on the command line
    title: str  # human name
    base_url: str  # published location; a file's URL is base_url + file name
    files: tuple[DataFile, ...]
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]  # height, width, channels
    format: str  # "cifar10", "cifar100" (pickled batches in a tarball) or "idx" (gzip IDX)


_CIFAR100_CLASSES = tuple(
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus "
    "butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach "
    "couch crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster "
    "house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree "
    "motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear "
    "pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road "
    "rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel "
    "streetcar sunflower sweet_pepper table tank telephone television tiger tractor train "
    "trout tulip turtle wardrobe whale willow_tree wolf woman worm".split()
)

DATASETS: dict[str, Dataset] = {
    "cifar10": Dataset(
        name="cifar10",
        title="CIFAR-10",
        base_url="https://www.cs.toronto.edu/~kriz/",
        files=(
            DataFile(
                "cifar-10-python.tar.gz",
                "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
                170498071,
            ),
        ),
        # The lecture's short names.
        class_names=("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        image_shape=(32, 32, 3),
        format="cifar10",
    ),
    "cifar100": Dataset(
        name="cifar100",
        title="CIFAR-100 (fine labels)",
        base_url="https://www.cs.toronto.edu/~kriz/",
        files=(
            DataFile(
                "cifar-100-python.tar.gz",
                "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
                169001437,
            ),
        ),
        class_names=_CIFAR100_CLASSES,
        image_shape=(32, 32, 3),
        format="cifar100",
    ),
    "mnist": Dataset(
        name="mnist",
        title="MNIST",
        # The mirror TensorFlow's own examples use; yann.lecun.com often refuses.
        base_url="https://storage.googleapis.com/cvdf-datasets/mnist/",
        files=(
            DataFile(
                "train-images-idx3-ubyte.gz",
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                9912422,
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            ),
            DataFile(
                "train-labels-idx1-ubyte.gz",
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                28881,
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            ),
            DataFile(
                "t10k-images-idx3-ubyte.gz",
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                1648877,
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            ),
            DataFile(
                "t10k-labels-idx1-ubyte.gz",
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                4542,
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            ),
        ),
        class_names=tuple(str(digit) for digit in range(10)),
        image_shape=(28, 28, 1),
        format="idx",
    ),
    "fashion_mnist": Dataset(
        name="fashion_mnist",
        title="Fashion-MNIST",
        base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        files=(
            DataFile(
                "train-images-idx3-ubyte.gz",
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                26421880,
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            ),
            DataFile(
                "train-labels-idx1-ubyte.gz",
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                29515,
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            ),
            DataFile(
                "t10k-images-idx3-ubyte.gz",
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                4422102,
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            ),
            DataFile(
                "t10k-labels-idx1-ubyte.gz",
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                5148,
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            ),
        ),
        class_names=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
        image_shape=(28, 28, 1),
        format="idx",
    ),
}


def get_dataset(name: str) -> Dataset:
    """The registry entry for `name`; an unknown name lists the accepted ones."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; accepted: {', '.join(DATASETS)}")
    return DATASETS[name]


def load_arrays(dataset: Dataset, folder: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Read the verified files in `folder` into uint8 NHWC images and int32 labels.

    Returns:
        ((train_images, train_labels), (test_images, test_labels)).
    """
    if dataset.format in ("cifar10", "cifar100"):
        return _read_cifar(folder / dataset.files[0].name, dataset.format)
    if dataset.format == "idx":
        paths = {f.name: folder / f.name for f in dataset.files}
        train = (_read_idx(paths["train-images-idx3-ubyte.gz"]), _read_idx(paths["train-labels-idx1-ubyte.gz"]))
        test = (_read_idx(paths["t10k-images-idx3-ubyte.gz"]), _read_idx(paths["t10k-labels-idx1-ubyte.gz"]))
        return (train[0][..., None], train[1].astype(np.int32)), (test[0][..., None], test[1].astype(np.int32))
    raise AssertionError(f"no reader for format {dataset.format!r}")


def _read_cifar(archive: Path, kind: str):
    """CIFAR's python tarball: pickled dicts of (N, 3072) channel-first rows."""
    if kind == "cifar10":
        train_members = [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)]
        test_members = ["cifar-10-batches-py/test_batch"]
        label_key = b"labels"
    else:
        train_members, test_members = ["cifar-100-python/train"], ["cifar-100-python/test"]
        label_key = b"fine_labels"
    with tarfile.open(archive, "r:gz") as tar:

        def read(members):
            images, labels = [], []
            for member in members:
                # The archive is verified before loading, so unpickling it is safe.
                batch = pickle.load(tar.extractfile(member), encoding="bytes")
                images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.append(np.asarray(batch[label_key], dtype=np.int32))
            return np.concatenate(images).transpose(0, 2, 3, 1), np.concatenate(labels)

        return read(train_members), read(test_members)


def _read_idx(path: Path) -> np.ndarray:
    """One gzip IDX file (MNIST's format): a magic number, the dimensions, the bytes."""
    with gzip.open(path, "rb") as stream:
        raw = stream.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)
