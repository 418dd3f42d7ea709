"""Training: the lecture's `fit` trainer (1.2) and its `GradientTape` trainer (1.3).

Both run the lecture's recipe (RMSprop, sparse categorical cross-entropy and
accuracy, batch 32) one epoch at a time, validate after every epoch, and
derive every epoch's randomness (the data order and the dropout masks) from
the seed and the epoch number alone. That is what makes a run repeat exactly,
and what lets a stopped run continue from its last finished epoch as if it had
never stopped.

    trainer = make_trainer("tape", model, config)
    history = trainer.train(train_split, val_split)
"""

from __future__ import annotations

import sys
from typing import Callable

import numpy as np
import tensorflow as tf
from tensorflow import keras

from classifier.config import Config
from classifier.data import Split
from classifier.runtime import DurationTime

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")

# Called after every epoch with (epoch index, trainer); the run folder uses
# it to save a checkpoint.
EpochHook = Callable[[int, "Trainer"], None]


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """A 31-bit seed for one purpose (`stream`) in one epoch, from the run's seed."""
    return int(np.random.default_rng([seed, epoch, stream]).integers(2**31 - 1))


def epoch_order(seed: int, epoch: int, num_images: int) -> np.ndarray:
    """The shuffled order of the training images in one epoch.

    It depends on nothing but (seed, epoch): not on TensorFlow's global seed
    or how many random ops ran before, which a resumed process cannot replay.
    """
    return np.random.default_rng(epoch_seed(seed, epoch, 0)).permutation(num_images)


def make_optimizer(config: Config) -> keras.optimizers.Optimizer:
    """The lecture's optimizer: RMSprop at the config's learning rate."""
    return keras.optimizers.RMSprop(learning_rate=config.learning_rate)


class Trainer:
    """What both trainers share: the model, the recipe, the history, the epoch loop."""

    def __init__(self, model: keras.Model, config: Config, verbose: int | None = None):
        self.model = model
        self.config = config
        self.optimizer = make_optimizer(config)
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy()
        # One line per epoch when the output is a log file rather than a terminal.
        self.verbose = verbose if verbose is not None else (1 if sys.stdout.isatty() else 2)
        self.history: dict[str, list[float]] = {key: [] for key in HISTORY_KEYS}
        self.epoch_seconds: list[float] = []

    def train(self, train: Split, val: Split, start_epoch: int = 0, on_epoch_end: EpochHook | None = None) -> dict:
        """Train from `start_epoch` up to config.epochs, validating after each epoch.

        Returns:
            The per-epoch history: {"loss", "accuracy", "val_loss", "val_accuracy"}.
        """
        self._prepare(train, val)
        for epoch in range(start_epoch, self.config.epochs):
            self._reseed_dropout(epoch)
            with DurationTime(f"epoch {epoch + 1}/{self.config.epochs}", verbose=False) as timer:
                metrics = self._run_epoch(epoch, train, val)
            for key in HISTORY_KEYS:
                self.history[key].append(float(metrics[key]))
            self.epoch_seconds.append(timer.seconds)
            if on_epoch_end:
                on_epoch_end(epoch, self)
        return self.history

    def _reseed_dropout(self, epoch: int) -> None:
        # Dropout draws its masks from seed-generator variables that are not
        # part of the model's weights; setting them from (seed, epoch) makes a
        # resumed epoch draw the same masks as an uninterrupted one.
        for index, state in enumerate(_seed_states(self.model)):
            value = [epoch_seed(self.config.seed, epoch, 1000 + index), 0]
            state.assign(np.asarray(value, dtype=state.dtype))

    def _prepare(self, train: Split, val: Split) -> None:
        raise NotImplementedError

    def _run_epoch(self, epoch: int, train: Split, val: Split) -> dict:
        raise NotImplementedError


def _seed_states(model: keras.Model) -> list:
    return [v for v in model.non_trainable_variables if v.path.endswith("seed_generator_state")]


class FitTrainer(Trainer):
    """Lecture 1.2: `model.compile` then `model.fit` on NumPy arrays."""

    def _prepare(self, train: Split, val: Split) -> None:
        self.model.compile(
            optimizer=self.optimizer,
            loss=self.loss_fn,
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )

    def _run_epoch(self, epoch: int, train: Split, val: Split) -> dict:
        # The order comes from epoch_order rather than fit's own shuffle, whose
        # state lives in the process and would be lost on a resume.
        order = epoch_order(self.config.seed, epoch, len(train))
        result = self.model.fit(
            train.images[order],
            train.labels[order],
            batch_size=self.config.batch_size,
            initial_epoch=epoch,
            epochs=epoch + 1,
            shuffle=False,
            validation_data=(val.images, val.labels),
            validation_batch_size=self.config.eval_batch_size,
            verbose=self.verbose,
        )
        return {key: result.history[key][-1] for key in HISTORY_KEYS}


class TapeTrainer(Trainer):
    """Lecture 1.3: a `tf.data` pipeline and a `GradientTape` step under `tf.function`."""

    def _prepare(self, train: Split, val: Split) -> None:
        self.train_loss = keras.metrics.Mean(name="loss")
        self.train_accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.val_loss = keras.metrics.Mean(name="val_loss")
        self.val_accuracy = keras.metrics.SparseCategoricalAccuracy(name="val_accuracy")
        self.optimizer.build(self.model.trainable_variables)
        # A batch dimension of None: the last, smaller batch reuses the same graph.
        signature = [
            tf.TensorSpec((None, *train.images.shape[1:]), tf.float32),
            tf.TensorSpec((None,), tf.int32),
        ]
        self._train_step = tf.function(self._train_step_eager, input_signature=signature)
        self._val_step = tf.function(self._val_step_eager, input_signature=signature)
        self._train_images = tf.constant(train.images)
        self._train_labels = tf.constant(train.labels)
        self._val_data = (
            tf.data.Dataset.from_tensor_slices((val.images, val.labels))
            .batch(self.config.eval_batch_size)
            .prefetch(tf.data.AUTOTUNE)
        )

    def _train_step_eager(self, images, labels):
        with tf.GradientTape() as tape:
            probs = self.model(images, training=True)
            loss = self.loss_fn(labels, probs)
        gradients = tape.gradient(loss, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.model.trainable_variables))
        self.train_loss.update_state(loss, sample_weight=tf.shape(labels)[0])
        self.train_accuracy.update_state(labels, probs)

    def _val_step_eager(self, images, labels):
        probs = self.model(images, training=False)
        self.val_loss.update_state(self.loss_fn(labels, probs), sample_weight=tf.shape(labels)[0])
        self.val_accuracy.update_state(labels, probs)

    def _run_epoch(self, epoch: int, train: Split, val: Split) -> dict:
        for metric in (self.train_loss, self.train_accuracy, self.val_loss, self.val_accuracy):
            metric.reset_state()
        batches = (
            tf.data.Dataset.from_tensor_slices(epoch_order(self.config.seed, epoch, len(train)))
            .batch(self.config.batch_size)
            .map(lambda index: (tf.gather(self._train_images, index), tf.gather(self._train_labels, index)))
            .prefetch(tf.data.AUTOTUNE)
        )
        steps = -(-len(train) // self.config.batch_size)
        if self.verbose:
            print(f"Epoch {epoch + 1}/{self.config.epochs}")
        bar = keras.utils.Progbar(steps, verbose=self.verbose, stateful_metrics=["loss", "accuracy"])
        for step, (images, labels) in enumerate(batches, start=1):
            self._train_step(images, labels)
            if self.verbose == 1 or step == steps:
                bar.update(step, [("loss", self.train_loss.result()), ("accuracy", self.train_accuracy.result())])
        for images, labels in self._val_data:
            self._val_step(images, labels)
        metrics = {
            "loss": self.train_loss.result(),
            "accuracy": self.train_accuracy.result(),
            "val_loss": self.val_loss.result(),
            "val_accuracy": self.val_accuracy.result(),
        }
        if self.verbose:
            print(f"  val_loss: {float(metrics['val_loss']):.4f} - val_accuracy: {float(metrics['val_accuracy']):.4f}")
        return metrics


TRAINERS = {"fit": FitTrainer, "tape": TapeTrainer}


def make_trainer(name: str, model: keras.Model, config: Config, verbose: int | None = None) -> Trainer:
    """The trainer called `name` ("fit" or "tape") for `model`."""
    return TRAINERS[name](model, config, verbose=verbose)
