"""Reading the published formats and splitting the way the lecture does."""

import numpy as np
import pytest

from classifier.config import UserError
from classifier.lecture.split import prepare
from classifier.machinery.datasets import DATASETS, get_dataset, load_arrays

from conftest import make_cifar_archive, make_idx_files


def test_registry_lists_the_four_datasets_with_hashes_and_classes():
    assert list(DATASETS) == ["cifar10", "cifar100", "mnist", "fashion_mnist"]
    for dataset in DATASETS.values():
        assert all(len(f.sha256) == 64 and f.size > 0 for f in dataset.files)
    assert get_dataset("cifar10").class_names[:3] == ("plane", "car", "bird")
    assert len(get_dataset("cifar100").class_names) == 100
    assert get_dataset("fashion_mnist").image_shape == (28, 28, 1)


def test_unknown_dataset_lists_the_accepted_names():
    with pytest.raises(UserError, match="unknown dataset 'svhn'; accepted: cifar10, cifar100, mnist, fashion_mnist"):
        get_dataset("svhn")


@pytest.mark.parametrize("kind, classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_tarball_loads_as_nhwc(tmp_path, kind, classes):
    name = get_dataset(kind).files[0].name
    make_cifar_archive(tmp_path / name, kind=kind, per_batch=4, num_test=6)
    (x_train, y_train), (x_test, y_test) = load_arrays(get_dataset(kind), tmp_path)
    assert x_train.shape == (20, 32, 32, 3) and x_test.shape == (6, 32, 32, 3)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int32 and y_train.ndim == 1
    assert y_train.max() < classes
    # The stripe for the label is at rows label*3 .. label*3+2 in every channel (channel-first rows undone).
    label = int(y_train[0])
    row = (label * 3) % 32
    assert (x_train[0, row, :, :] == 255).all()


def test_idx_files_load_with_a_channel_axis(tmp_path):
    make_idx_files(tmp_path, num_train=30, num_test=10)
    (x_train, y_train), (x_test, y_test) = load_arrays(get_dataset("mnist"), tmp_path)
    assert x_train.shape == (30, 28, 28, 1) and x_test.shape == (10, 28, 28, 1)
    assert y_test.shape == (10,) and y_test.dtype == np.int32


def test_prepare_scales_and_keeps_the_last_fifth_for_validation():
    images = np.arange(10 * 2 * 2, dtype=np.uint8).reshape(10, 2, 2, 1) * 6
    labels = np.arange(10, dtype=np.int32)
    train, val, test = prepare(((images, labels), (images[:3], labels[:3])), val_split=0.2)
    assert train.images.dtype == np.float32 and 0.0 <= train.images.min() and train.images.max() <= 1.0
    assert train.labels.tolist() == list(range(8)) and val.labels.tolist() == [8, 9]
    assert len(test) == 3
    np.testing.assert_allclose(val.images[0], images[8] / 255.0, rtol=1e-6)


def test_limit_keeps_the_first_images():
    images = np.zeros((100, 2, 2, 1), np.uint8)
    labels = np.arange(100, dtype=np.int32)
    train, val, _ = prepare(((images, labels), (images, labels)), limit=10, val_split=0.2)
    assert train.labels.tolist() == list(range(8)) and val.labels.tolist() == [8, 9]


def test_limit_larger_than_the_data_is_refused():
    images = np.zeros((5, 2, 2, 1), np.uint8)
    labels = np.zeros(5, np.int32)
    with pytest.raises(UserError, match="limit 6 is larger than the 5 training images"):
        prepare(((images, labels), (images, labels)), limit=6)


def test_split_that_leaves_nothing_to_validate_is_refused():
    images = np.zeros((2, 2, 2, 1), np.uint8)
    labels = np.zeros(2, np.int32)
    with pytest.raises(UserError, match="val_split 0.1 leaves 2 training and 0 validation images"):
        prepare(((images, labels), (images, labels)), val_split=0.1)
