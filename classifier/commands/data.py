"""`invoke data`: download (or import) one dataset into the cache, verify it, and lay it out for the course's scripts.

    invoke data --dataset cifar10                                  # download, verify every file's SHA-256
    invoke data --dataset fashion_mnist --from /media/usb/fashion  # import a copy on disk instead
"""

from __future__ import annotations

from pathlib import Path

from classifier import config as config_module
from classifier.config import UserError, make_config
from classifier.machinery import course_loaders
from classifier.machinery.datasets import get_dataset
from classifier.machinery.download import fetch, import_from, problems


def data_command(dataset_name: str, data_dir: str = "", mirror: str = "", source: str = "",
                 torchvision_root: str = "") -> Path:
    """Download (or import with `source`) one dataset into the cache and verify it.

    The course's own scripts then find the verified files offline: Keras'
    cache is filled, and torchvision's root (`torchvision_root`, default the
    data folder) is laid out.
    """
    dataset = get_dataset(dataset_name)
    root = config_module.data_dir(make_config(dataset=dataset_name, data_dir=data_dir))
    # Both said before a download of several minutes, not after it.
    if torchvision_root and Path(torchvision_root).expanduser().is_file():
        raise UserError(f"--torchvision-root {torchvision_root} is a file; give a folder (torchvision's root=)")
    course_loaders.check_keras_home(dataset)
    folder = import_from(dataset, root, Path(source)) if source else fetch(dataset, root, mirror=mirror)
    if not problems(dataset, root):
        print(f"{dataset.title}: {len(dataset.files)} file(s) verified in {folder}")
        # The course's scripts call keras.datasets.<name>.load_data() and torchvision.datasets.<Class>(root=...,
        # download=True): let them find these files offline.
        print(course_loaders.keras_report(dataset, course_loaders.fill_keras_cache(dataset, root)))
        try:
            laid_out = course_loaders.fill_torchvision_root(dataset, root, Path(torchvision_root or root))
        except UserError as error:
            if torchvision_root:
                raise
            # The data folder was not asked for, and the dataset itself is verified: say why, do not fail.
            print(f"torchvision root not laid out: {error}")
        else:
            print(course_loaders.torchvision_report(dataset, laid_out))
    return folder
