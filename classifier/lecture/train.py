"""Training, the lecture's two ways: `model.fit` (lecture 1.2) and a `GradientTape` loop (lecture 1.3).

    trainer = FitTrainer(model, optimizer, config)          # or TapeTrainer
    history = trainer.train((x_train, y_train), (x_val, y_val))

Both take the lecture's loss (sparse categorical cross-entropy) and metric
(accuracy), validate after every epoch and return the history as
{"loss", "accuracy", "val_loss", "val_accuracy"}. What the lab adds around
them comes in through `callbacks` (Keras callbacks; the tape loop calls their
`on_epoch_begin`/`on_epoch_end` itself): saving checkpoints, timing epochs;
and, on one device, many of these steps per call into TensorFlow (the tape
loop's steps a hundred to a graph call, `fit`'s `steps_per_execution`,
classifier/machinery/steps.py), which gives the same weights, faster.
The optimizer and, for the fast recipe, its schedule and smoothed loss come
from classifier/machinery/recipes.py; several devices from distribute.py.
"""

from __future__ import annotations

import sys

import tensorflow as tf
from tensorflow import keras

from classifier.config import Config


class FitTrainer:
    """Lecture 1.2: `model.compile`, then `model.fit` with the last part of the training set validating."""

    def __init__(self, model: keras.Model, optimizer: keras.optimizers.Optimizer, config: Config,
                 callbacks=(), verbose: int | None = None, loss: keras.losses.Loss | None = None,
                 steps_per_execution: int = 1):
        self.model = model
        self.optimizer = optimizer
        # The lecture's one step per call, unless the lab asks for more (classifier/machinery/steps.py).
        self.steps_per_execution = steps_per_execution
        self.batch_size = config.batch_size
        self.epochs = config.epochs
        self.eval_batch_size = config.eval_batch_size
        # The lecture's SparseCategoricalCrossentropy, unless the recipe gives another (recipes.make_loss).
        self.loss = loss or keras.losses.SparseCategoricalCrossentropy()
        self.callbacks = list(callbacks)
        self.verbose = _verbosity(verbose)

    def train(self, train_data, val_data, initial_epoch: int = 0) -> dict:
        """Train up to `epochs` (starting after `initial_epoch` finished ones); returns this call's history."""
        x_train, y_train = train_data
        self.model.compile(
            loss=self.loss,
            optimizer=self.optimizer,
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            steps_per_execution=self.steps_per_execution,
        )
        history = self.model.fit(x_train, y_train, batch_size=self.batch_size, epochs=self.epochs,
                                 validation_data=val_data, initial_epoch=initial_epoch,
                                 # Validation only: larger batches, fewer steps, the same weights.
                                 validation_batch_size=self.eval_batch_size,
                                 callbacks=self.callbacks, verbose=self.verbose)
        return history.history


class TapeTrainer:
    """Lecture 1.3: a shuffled, batched `tf.data.Dataset` and a `@tf.function` step with `tf.GradientTape`."""

    def __init__(self, model: keras.Model, optimizer: keras.optimizers.Optimizer, config: Config,
                 callbacks=(), verbose: int | None = None, loss: keras.losses.Loss | None = None):
        self.model = model
        # The lecture's SparseCategoricalCrossentropy, unless the recipe gives another (recipes.make_loss).
        self.loss_object = loss or keras.losses.SparseCategoricalCrossentropy()
        self.optimizer = optimizer
        self.batch_size = config.batch_size
        self.epochs = config.epochs
        self.seed = config.seed
        self.eval_batch_size = config.eval_batch_size  # validation only: larger batches, same numbers
        self.callbacks = keras.callbacks.CallbackList(list(callbacks), model=model)
        self.verbose = _verbosity(verbose)
        self.train_loss = keras.metrics.Mean(name="loss")
        self.train_accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.val_loss = keras.metrics.Mean(name="val_loss")
        self.val_accuracy = keras.metrics.SparseCategoricalAccuracy(name="val_accuracy")

    def train(self, train_data, val_data, initial_epoch: int = 0) -> dict:
        """Train up to `epochs` (starting after `initial_epoch` finished ones); returns this call's history."""
        dataset, val_dataset = self.make_datasets(train_data, val_data)
        # Each pass over `dataset` reshuffles. A resumed run skips the passes of
        # the epochs already done, so that it sees the orders it would have seen.
        for _ in range(initial_epoch):
            iter(dataset)
        history = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
        for epoch in range(initial_epoch, self.epochs):
            self.callbacks.on_epoch_begin(epoch)
            for metric in (self.train_loss, self.train_accuracy, self.val_loss, self.val_accuracy):
                metric.reset_state()
            self.train_epoch(dataset)
            self.validate_epoch(val_dataset)
            logs = {metric.name: float(metric.result()) for metric in
                    (self.train_loss, self.train_accuracy, self.val_loss, self.val_accuracy)}
            for key, value in logs.items():
                history[key].append(value)
            if self.verbose:
                print(f"[Training] epoch={epoch + 1}/{self.epochs}, loss={logs['loss']:.4f}, "
                      f"accuracy={logs['accuracy']:.4f}, val_loss={logs['val_loss']:.4f}, "
                      f"val_accuracy={logs['val_accuracy']:.4f}", flush=True)
            self.callbacks.on_epoch_end(epoch, logs)
        return history

    def train_epoch(self, dataset):
        """One pass over the training batches, one `train_batch_graph` step each."""
        for x_batch, y_batch in dataset:
            self.train_batch_graph(x_batch, y_batch)

    def validate_epoch(self, val_dataset):
        """One pass over the validation batches."""
        for x_batch, y_batch in val_dataset:
            self.validate_batch_graph(x_batch, y_batch)

    def make_datasets(self, train_data, val_data):
        """The training batches, reshuffled on every pass, and the validation batches."""
        x_train, y_train = train_data
        dataset = tf.data.Dataset.from_tensor_slices((x_train, y_train))
        # The lecture shuffles with a buffer of 200, which only mixes neighbours;
        # a buffer as large as the data shuffles fully, as `fit` does. The seed
        # makes the order of every epoch repeat from run to run.
        dataset = dataset.shuffle(len(x_train), seed=self.seed).batch(self.batch_size)
        val_dataset = tf.data.Dataset.from_tensor_slices(val_data).batch(self.eval_batch_size)
        return dataset, val_dataset

    @tf.function
    def train_batch_graph(self, x_batch, y_batch):
        with tf.GradientTape() as tape:
            # training=True: Dropout drops only while training.
            predictions = self.model(x_batch, training=True)
            loss = self.loss_object(y_batch, predictions)
        gradients = tape.gradient(loss, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.model.trainable_variables))
        self.train_loss.update_state(loss, sample_weight=tf.shape(y_batch)[0])
        self.train_accuracy.update_state(y_batch, predictions)

    @tf.function
    def validate_batch_graph(self, x_batch, y_batch):
        predictions = self.model(x_batch, training=False)
        self.val_loss.update_state(self.loss_object(y_batch, predictions), sample_weight=tf.shape(y_batch)[0])
        self.val_accuracy.update_state(y_batch, predictions)


def _verbosity(verbose: int | None) -> int:
    # fit's progress bar in a terminal; one line per epoch in a log file.
    return verbose if verbose is not None else (1 if sys.stdout.isatty() else 2)


TRAINERS = {"fit": FitTrainer, "tape": TapeTrainer}
