"""What the lecture notebooks take for granted, in one import: `from classifier import lab`.

    (x_train, y_train), (x_test, y_test), class_names = lab.load_data("fashion_mnist")
    lab.show_samples(x_train, y_train, class_names)
    ... the lecture's own code: create, compile, fit, evaluate ...
    lab.record_run(model, history, (x_test, y_test), dataset="fashion_mnist", trainer="fit", ...)

A notebook imports this module and nothing else from the package (tests/test_layers.py checks).

Everything the class types stays in the notebook; this module only supplies
the verified data, pictures shown inline, the seed, and the run record, so
that a notebook's run lands in runs/ with the evidence to compare it with the
`invoke train` it names: config, history, metrics, timings, learning curves,
confusion matrix, the model, and a manifest with the weights' and the data
files' SHA-256. What a notebook shows inline (the samples, the model's
graph or printed module) is not copied into it, and it keeps no checkpoint or
TensorBoard log; tests/test_notebooks.py checks the rest against the
command's run folder.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from classifier import config as config_module
from classifier import registry
from classifier.config import UserError, make_config, to_dict
from classifier.machinery import hosted, numerics, quiet
from classifier.machinery.datasets import get_dataset
from classifier.machinery.download import verified_files
from classifier.machinery.files import write_json
from classifier.machinery.loading import read_verified
from classifier.machinery.runs import create_run_dir, environment_record, finish_run, save_keras_model

# The lecture's runtime helpers, for `from classifier.lab import DurationTime, gpu_config`. They live in
# classifier/lecture/runtime.py, which imports TensorFlow: loaded on first use (__getattr__ below), so that
# `lab.use_numerics()` runs before TensorFlow starts.
_RUNTIME = ("DurationTime", "gpu_config", "seed_everything")


def __getattr__(name: str):
    if name in _RUNTIME:
        from classifier.lecture import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_notebook_environment(environment=os.environ) -> None:
    """The notebooks' NOTEBOOK_* settings, checked when their first cell imports this module.

    A notebook reads them with a bare `int(...)`: NOTEBOOK_LIMIT=-5 would train
    on all but 5 images and NOTEBOOK_EPOCHS=0 would fail only in the last cell,
    at the run record, without naming the variable.

    Args:
        environment: the variables to check (default: this process's).

    Raises:
        UserError: a variable that is set holds a value the notebooks cannot use; the message names it.
    """
    wanted = {"NOTEBOOK_LIMIT": (0, "0 (all training images) or a number of images, e.g. NOTEBOOK_LIMIT=600"),
              "NOTEBOOK_EPOCHS": (1, "a number of epochs, at least 1, e.g. NOTEBOOK_EPOCHS=1")}
    for name, (least, accepted) in wanted.items():
        value = environment.get(name)
        if value is None:
            continue
        try:
            number = int(value)
        except ValueError:
            number = least - 1
        if number < least:
            raise UserError(f"{name}={value!r} cannot be used: give {accepted}, or unset it for the default")
    dataset = environment.get("NOTEBOOK_DATASET")
    if dataset is not None and dataset not in registry.DATASETS:
        raise UserError(f"NOTEBOOK_DATASET={dataset!r} is not a dataset the lab knows; accepted: "
                        f"{', '.join(registry.DATASETS)}")


check_notebook_environment()


# A notebook's first cell, before TensorFlow starts: the numerics mode `invoke train` would use here
# (numerics.use: $CLASSIFIER_NUMERICS, which the lab image sets to "portable", else fastest), and the
# filter that keeps TensorFlow's C++ start-up notices out of the cells (classifier/machinery/quiet.py).
use_numerics = numerics.use
drop_native_notices = quiet.drop_native_notices
# A notebook's Colab cell: in Google Colab what ./setup.sh does on a laptop, elsewhere nothing (machinery/hosted.py).
setup_colab = hosted.setup_colab


def load_data(dataset_name: str = "cifar10", limit: int | None = None):
    """The dataset as `keras.datasets.<name>.load_data()` gives it, from the lab's verified cache.

    Images are uint8, NHWC (a channel axis even for gray images); labels are
    1-D (the lecture's `y_train[:, 0]` is done). A missing dataset is imported
    from $NOTEBOOK_DATA_SOURCE when set (a copy on disk), else downloaded.

    Args:
        dataset_name: a registered dataset (cifar10, cifar100, mnist, fashion_mnist).
        limit: keep only the first `limit` training images (None: all).

    Returns:
        ((x_train, y_train), (x_test, y_test), class_names).
    """
    if limit is not None and limit < 0:
        # A negative slice would keep all but the last images, silently.
        raise UserError(f"limit must be None or 0 (all training images) or a number of images, got {limit}")
    dataset = get_dataset(dataset_name)
    source = os.environ.get("NOTEBOOK_DATA_SOURCE")
    ((x_train, y_train), test), _ = read_verified(dataset, config_module.data_dir(make_config(dataset=dataset_name)),
                                                  source=Path(source) if source else None)
    if limit:
        x_train, y_train = x_train[:limit], y_train[:limit]
    return (x_train, y_train), test, dataset.class_names


def show_samples(images, labels, class_names, grid=(3, 4)) -> None:
    """The lecture's 3x4 grid of images with their class names, shown in the notebook."""
    from classifier.machinery import report

    _show(report.show_samples(np.asarray(images), np.asarray(labels), class_names, _scratch("samples.png"), grid))


def plot_model(model, name: str = "model.png") -> None:
    """`keras.utils.plot_model`'s picture, shown in the notebook (needs graphviz)."""
    from classifier.machinery import report

    _show(report.plot_model(model, _scratch(name)))


def record_run(model, history: dict, test_data, *, dataset: str, trainer: str, model_name: str,
               epochs: int, batch_size: int, seed: int, limit: int | None = None, val_split: float = 0.2,
               train_seconds: float | None = None, direct: bool = False) -> Path:
    """Evaluate `model` on the test set as `invoke train` does and write a run folder for it.

    The run folder has the files of one from `invoke train` that hold its
    result (config, history, metrics, timings, curves, confusion matrix, model,
    manifest with the weights' and the data files' SHA-256), so a notebook's
    result can be compared with a command's.

    Args:
        model: the trained Keras model.
        history: per-epoch {"loss", "accuracy", "val_loss", "val_accuracy"} (fit's `history.history`).
        test_data: (x_test, y_test), images scaled as for training.
        dataset, trainer, model_name, epochs, batch_size, seed, limit, val_split:
            the settings the notebook used, as `invoke train` flags would give them.
        train_seconds: the training time, if measured.
        direct: evaluate by calling the model (lecture 1.3) rather than evaluate()/predict().

    Returns:
        The run folder.
    """
    from classifier.lecture.split import Split
    from classifier.lecture.evaluate import evaluate

    config = make_config(dataset=dataset, trainer=trainer, model=model_name, epochs=epochs, batch_size=batch_size,
                         seed=seed, limit=limit, val_split=val_split)
    info = get_dataset(dataset)
    run_dir = create_run_dir(config_module.runs_dir(config), config)
    write_json(run_dir / "config.json", to_dict(config))
    x_test, y_test = test_data
    test = Split(np.asarray(x_test, dtype=np.float32), np.asarray(y_test, dtype=np.int32))
    started = time.perf_counter()
    metrics = evaluate(model, test, len(info.class_names), config.eval_batch_size, direct=direct)
    manifest = {"status": "running", "seed": seed, "config": to_dict(config), "source": "notebook",
                "data": _data_record(config, len(y_test)), "environment": environment_record()}
    # fit names the lecture's metric "sparse_categorical_accuracy"; the run folder calls it "accuracy".
    history = {key.replace("sparse_categorical_accuracy", "accuracy"): [float(value) for value in values]
               for key, values in history.items()}
    timings = {"train_seconds": train_seconds, "evaluate_seconds": time.perf_counter() - started}
    finish_run(run_dir, history, metrics, timings, manifest, info.class_names, save_keras_model(run_dir, model))
    _show(run_dir / "learning_curves.png")
    _show(run_dir / "confusion_matrix.png")
    print(f"test loss {metrics['loss']:.4f}, test accuracy {metrics['accuracy']:.4f}")
    print(f"Run folder: {run_dir}")
    print(f"weights SHA-256: {(manifest['weights_sha256'])}")
    return run_dir


def record_torch_run(model, history: dict, test_data, *, dataset: str, model_name: str, epochs: int,
                     batch_size: int, seed: int, limit: int | None = None, val_split: float = 0.2,
                     train_seconds: float | None = None) -> Path:
    """`record_run` for a PyTorch model (lecture part 2): the run folder `invoke train --trainer torch` writes.

    Args:
        model: the trained `nn.Module` (logits out, or softmax for the lecture-faithful build).
        history: per-epoch {"loss", "accuracy", "val_loss", "val_accuracy"}.
        test_data: (x_test, y_test) as `load_data` gave them (uint8, NHWC); they are
            scaled and put channels-first as for training.
        dataset, model_name, epochs, batch_size, seed, limit, val_split: the settings
            the notebook used, as `invoke train --trainer torch` flags would give them.
        train_seconds: the training time, if measured.

    Returns:
        The run folder.
    """
    from classifier.lecture.split import Split
    from classifier.machinery.torch_runs import save_torch_model, torch_environment
    from classifier.lecture.torch_train import evaluate_torch

    config = make_config(dataset=dataset, trainer="torch", model=model_name, epochs=epochs, batch_size=batch_size,
                         seed=seed, limit=limit, val_split=val_split)
    info = get_dataset(dataset)
    run_dir = create_run_dir(config_module.runs_dir(config), config)
    write_json(run_dir / "config.json", to_dict(config))
    x_test, y_test = test_data
    test = Split(np.asarray(x_test, dtype=np.float32) / np.float32(255.0), np.asarray(y_test, dtype=np.int32))
    started = time.perf_counter()
    metrics = evaluate_torch(model, test, len(info.class_names), config.eval_batch_size)
    manifest = {"status": "running", "seed": seed, "config": to_dict(config), "source": "notebook",
                "data": _data_record(config, len(y_test)),
                "environment": {**environment_record(tensorflow=False), **torch_environment()}}
    timings = {"train_seconds": train_seconds, "evaluate_seconds": time.perf_counter() - started}
    history = {key: [float(value) for value in values] for key, values in history.items()}
    finish_run(run_dir, history, metrics, timings, manifest, info.class_names, save_torch_model(run_dir, model))
    _show(run_dir / "learning_curves.png")
    _show(run_dir / "confusion_matrix.png")
    print(f"test loss {metrics['loss']:.4f}, test accuracy {metrics['accuracy']:.4f}")
    print(f"Run folder: {run_dir}")
    print(f"weights SHA-256: {manifest['weights_sha256']}")
    return run_dir


def _data_record(config, num_test: int) -> dict:
    """The dataset and its files' SHA-256, as `invoke train`'s manifest records them (the files load_data verified)."""
    dataset = get_dataset(config.dataset)
    return {"dataset": dataset.name, "sha256": verified_files(dataset, config_module.data_dir(config)),
            "test": num_test}


def _scratch(name: str) -> Path:
    folder = config_module.runs_dir(make_config()) / "notebooks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def _show(path: Path) -> None:
    try:
        from IPython.display import Image, display
    except ImportError:  # Outside Jupyter the picture is only written.
        print(f"picture: {path}")
        return
    display(Image(filename=str(path)))
