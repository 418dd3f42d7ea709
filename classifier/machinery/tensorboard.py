"""TensorBoard for every run: event files in the run folder, the same tags from every trainer.

    invoke train --dataset fashion_mnist --epochs 3
    tensorboard --logdir runs          # or the compose lab's TensorBoard service

Each run writes `RUN/tensorboard/`:

| folder | what | written by |
|---|---|---|
| `train/` | `epoch_loss`, `epoch_accuracy`, `epoch_learning_rate` per epoch; the model's forward-pass graph | `EpochSummaries`, a Keras callback that `fit` calls and the tape loop calls too |
| `validation/` | `epoch_loss`, `epoch_accuracy` per epoch | the same |
| `.` (the folder itself) | the run's hyperparameters (HParams dashboard), `test/loss` and `test/accuracy`, the sample grid, learning curves and confusion matrix as images | `write_run_summaries` (classifier/machinery/tensorboard_events.py) once the run is evaluated |

Both trainers use Keras' tag names, and so does `--trainer torch`
(`tensorboard_events.EpochScalars`, written without TensorFlow), so fit,
tape and torch runs overlay in the Scalars dashboard and line up in the
HParams table. Nothing here draws from a
random generator or touches the model's weights, so a run with TensorBoard is
bit-identical to one without (tests/test_tensorboard.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import tensorflow as tf
from tensorflow import keras

# The folder layout is TensorFlow-free, shared with the PyTorch trainer and the run-level summaries.
from classifier.machinery.tensorboard_events import log_dir


class EpochSummaries(keras.callbacks.Callback):
    """Per-epoch scalars and the model graph, for `fit` and for the tape loop alike.

    A Keras callback: `model.fit` calls it, and the tape loop calls the same
    `on_epoch_begin`/`on_epoch_end` itself, so both trainers write the same
    tags with `tf.summary`. The tags are those of Keras' own
    `keras.callbacks.TensorBoard` (`epoch_loss`, `epoch_accuracy` under
    train/ and validation/, `epoch_learning_rate`), which that callback
    cannot give the tape loop: it reads the learning rate from a compiled
    model and writes the graph at `on_train_begin`, which a hand-written loop
    does not call. No histograms, images or profiling per epoch: those cost
    time every epoch.

        callbacks = [EpochSummaries(run_dir, optimizer, input_shape), checkpoints]
    """

    def __init__(self, run_dir: Path, optimizer: keras.optimizers.Optimizer, input_shape):
        super().__init__()
        root = log_dir(run_dir)
        self.optimizer = optimizer
        self.input_shape = tuple(input_shape)
        self.train_writer = tf.summary.create_file_writer(str(root / "train"))
        self.validation_writer = tf.summary.create_file_writer(str(root / "validation"))
        self._graph_written = False
        # Time spent here, so that every run's timings.json shows what TensorBoard cost it.
        self.seconds = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        if not self._graph_written:
            start = time.perf_counter()
            self._write_graph()
            self._graph_written = True
            self.seconds += time.perf_counter() - start

    def _write_graph(self) -> None:
        """The op graph of the model's forward pass, for the Graphs dashboard.

        It comes from tracing alone (`get_concrete_function`): nothing runs, so
        no weight, optimizer step or random state changes.
        """
        forward = tf.function(lambda images: self.model(images, training=False))
        concrete = forward.get_concrete_function(tf.TensorSpec((None, *self.input_shape), tf.float32))
        with self.train_writer.as_default():
            tf.summary.graph(concrete.graph)

    def on_epoch_end(self, epoch, logs=None):
        start = time.perf_counter()
        logs = logs or {}
        with self.train_writer.as_default(step=epoch):
            for key in ("loss", "accuracy"):
                if key in logs:
                    tf.summary.scalar(f"epoch_{key}", float(logs[key]))
            tf.summary.scalar("epoch_learning_rate", current_learning_rate(self.optimizer))
        with self.validation_writer.as_default(step=epoch):
            for key in ("loss", "accuracy"):
                if f"val_{key}" in logs:
                    tf.summary.scalar(f"epoch_{key}", float(logs[f"val_{key}"]))
        # Flushed every epoch: TensorBoard shows a long run while it trains.
        self.train_writer.flush()
        self.validation_writer.flush()
        self.seconds += time.perf_counter() - start

    def close(self) -> None:
        self.train_writer.close()
        self.validation_writer.close()


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The optimizer's learning rate now (a schedule evaluated at the current step)."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
