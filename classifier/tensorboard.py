"""TensorBoard for every run: event files in the run folder, the same tags from both trainers.

    invoke train --dataset fashion_mnist --epochs 3
    tensorboard --logdir runs          # or the compose lab's TensorBoard service

Each run writes `RUN/tensorboard/`:

| folder | what | written by |
|---|---|---|
| `train/` | `epoch_loss`, `epoch_accuracy`, `epoch_learning_rate` per epoch; the training step's op graph; the Keras model graph (fit) | `fit`: Keras' own `keras.callbacks.TensorBoard`; `tape`: `TapeSummaries` with `tf.summary` |
| `validation/` | `epoch_loss`, `epoch_accuracy` per epoch | the same |
| `.` (the folder itself) | the run's hyperparameters (HParams dashboard), `test/loss` and `test/accuracy`, the sample grid and the confusion matrix as images | `write_run_summaries` once the run is evaluated |

Both trainers use Keras' tag names, so fit and tape runs overlay in the
Scalars dashboard and line up in the HParams table. Nothing here draws from a
random generator or touches the model's weights, so a run with TensorBoard is
bit-identical to one without (tests/test_tensorboard.py).
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf
from tensorflow import keras

LOG_DIR = "tensorboard"
# The run's knobs shown in the HParams dashboard (the rest of the config says where files go).
HPARAMS = ("dataset", "model", "trainer", "recipe", "strategy", "epochs", "batch_size", "learning_rate",
           "val_split", "limit", "seed")


def log_dir(run_dir: Path) -> Path:
    """The run's TensorBoard folder."""
    return Path(run_dir) / LOG_DIR


def fit_callback(run_dir: Path) -> keras.callbacks.Callback:
    """Keras' own TensorBoard callback for `model.fit`: per-epoch scalars, learning rate, graphs.

    No histograms and no profiler: both cost time every epoch, and the issue's
    promise is that TensorBoard does not slow training measurably.
    """
    return keras.callbacks.TensorBoard(log_dir=str(log_dir(run_dir)), histogram_freq=0, write_graph=True,
                                       write_images=False, update_freq="epoch", profile_batch=0)


class TapeSummaries:
    """What `fit_callback` writes, for the GradientTape trainer, with `tf.summary`.

        summaries = TapeSummaries(run_dir)
        summaries.graph(train_step, images, labels)      # once, before the first epoch
        summaries.epoch(epoch, logs, learning_rate)      # after each epoch
        summaries.close()
    """

    def __init__(self, run_dir: Path):
        root = log_dir(run_dir)
        self.train_writer = tf.summary.create_file_writer(str(root / "train"))
        self.validation_writer = tf.summary.create_file_writer(str(root / "validation"))

    def graph(self, function, *args) -> None:
        """The op graph of a `tf.function` (the training step) for the Graphs dashboard.

        The graph comes from tracing alone (`get_concrete_function`): nothing
        runs, so no weight, optimizer step or random state changes.
        """
        concrete = function.get_concrete_function(*args)
        with self.train_writer.as_default():
            tf.summary.graph(concrete.graph)

    def epoch(self, epoch: int, logs: dict, learning_rate: float | None = None) -> None:
        """Per-epoch scalars under Keras' tags: `loss`/`accuracy` to train, `val_*` to validation."""
        with self.train_writer.as_default(step=epoch):
            for key in ("loss", "accuracy"):
                if key in logs:
                    tf.summary.scalar(f"epoch_{key}", float(logs[key]))
            if learning_rate is not None:
                tf.summary.scalar("epoch_learning_rate", float(learning_rate))
        with self.validation_writer.as_default(step=epoch):
            for key in ("loss", "accuracy"):
                if f"val_{key}" in logs:
                    tf.summary.scalar(f"epoch_{key}", float(logs[f"val_{key}"]))
        self.train_writer.flush()
        self.validation_writer.flush()

    def close(self) -> None:
        self.train_writer.close()
        self.validation_writer.close()


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The optimizer's learning rate now (a schedule evaluated at the current step)."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def write_run_summaries(run_dir: Path, config: dict, metrics: dict, epochs_done: int) -> Path:
    """After evaluation: the hyperparameters with the test metrics, and the run's pictures as images.

    Args:
        run_dir: the run folder (its samples.png and confusion_matrix.png are read if present).
        config: the resolved config as written to config.json.
        metrics: what metrics.json holds (test loss and accuracy).
        epochs_done: the step the test metrics and images are logged at.

    Returns:
        The TensorBoard folder.
    """
    from tensorboard.plugins.hparams import api as hparams_api

    root = log_dir(run_dir)
    writer = tf.summary.create_file_writer(str(root))
    values = {key: _hparam_value(config.get(key)) for key in HPARAMS}
    with writer.as_default(step=epochs_done):
        hparams_api.hparams(values, trial_id=Path(run_dir).name)
        tf.summary.scalar("test/loss", float(metrics["loss"]))
        tf.summary.scalar("test/accuracy", float(metrics["accuracy"]))
        for name in ("samples", "confusion_matrix", "learning_curves"):
            picture = Path(run_dir) / f"{name}.png"
            if picture.is_file():
                image = tf.io.decode_png(tf.io.read_file(str(picture)), channels=4)
                tf.summary.image(name, image[None], step=epochs_done)
    writer.close()
    return root


def _hparam_value(value):
    # The HParams plugin takes bool, number or string; an absent --limit means "all".
    return "all" if value is None else value
