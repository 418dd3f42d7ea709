"""Loading a dataset, the one way every path does it: verified files -> arrays -> the lecture's split.

    dataset, (train, val, test), hashes = load_dataset(config)   # invoke train, both frameworks, bench
    arrays, hashes = read_verified(dataset, root)                  # the notebooks' lab.load_data, export

Like the lecture's keras.datasets loaders, a missing dataset is downloaded
first (or imported from a copy on disk); each file is hashed once.
"""

from __future__ import annotations

from pathlib import Path

from classifier import config as config_module
from classifier.config import Config, UserError
from classifier.lecture.split import prepare
from classifier.machinery.datasets import Dataset, get_dataset, load_arrays
from classifier.machinery.download import dataset_folder, fetch, import_from, verified_files


def read_verified(dataset: Dataset, root: Path, source: Path | None = None, download: bool = True):
    """The dataset's arrays as published (uint8 NHWC images, int32 labels), from the verified cache.

    Args:
        dataset: the registry entry.
        root: the cache root.
        source: import the files from this copy on disk first.
        download: fetch what the cache lacks; False leaves `invoke data`'s one-line advice.

    Returns:
        (((x_train, y_train), (x_test, y_test)), {file name: SHA-256}).
    """
    if source:
        import_from(dataset, root, source)
    try:
        hashes = verified_files(dataset, root)
    except UserError:
        if not download:
            raise
        fetch(dataset, root)
        hashes = verified_files(dataset, root)
    return load_arrays(dataset, dataset_folder(dataset, root)), hashes


def load_dataset(config: Config, download: bool = True):
    """The lecture's load_dataset: verified files -> scaled, split arrays.

    Returns:
        (dataset, (train, val, test) splits, {file name: SHA-256}).
    """
    dataset = get_dataset(config.dataset)
    arrays, hashes = read_verified(dataset, config_module.data_dir(config), download=download)
    train, val, test = prepare(arrays, limit=config.limit, val_split=config.val_split)
    print(f"Load {dataset.name} dataset: train {train.images.shape}, validation {val.images.shape}, "
          f"test {test.images.shape}")
    return dataset, (train, val, test), hashes
