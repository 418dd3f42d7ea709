"""Training: the lecture's `fit` trainer (1.2) and its `GradientTape` trainer (1.3).

Both run the config's recipe (the lecture's: RMSprop, sparse categorical
cross-entropy and accuracy, batch 32; or the fast one, FAST_RECIPE) one epoch
at a time, validate after every epoch, and derive every epoch's randomness
(the data order, the dropout masks and the fast recipe's mirroring) from the
seed and the epoch number alone. That is what makes a run repeat exactly,
and what lets a stopped run continue from its last finished epoch as if it had
never stopped.

    trainer = make_trainer("tape", model, config)
    history = trainer.train(train_split, val_split)

`config.recipe` picks the schedule ("lecture", or "fast": see `resolve_recipe`)
and `config.strategy` the devices ("default": one; "mirrored":
tf.distribute.MirroredStrategy over every GPU, or every logical CPU when there
is no GPU). Build the model under `make_strategy(config).scope()`.
"""

from __future__ import annotations

import dataclasses
import math
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


def epoch_flips(seed: int, epoch: int, num_images: int) -> np.ndarray:
    """Which images of one epoch (in epoch order) the fast recipe mirrors left-right; from (seed, epoch) only."""
    return np.random.default_rng(epoch_seed(seed, epoch, 2)).random(num_images) < 0.5


# The fast recipe's values for the fields that the lecture's recipe fixes.
# Worked out in benchmarks/NOTES.md: a batch of 128 with batch normalization
# and a one-cycle learning rate fits 11 epochs of Fashion-MNIST into 5 minutes
# on 2 CPU cores. It validates on 10% rather than 20%: the images that
# validation does not need train.
FAST_RECIPE = {"model": "fast_cnn", "batch_size": 128, "epochs": 11, "learning_rate": 0.003, "val_split": 0.1}


def resolve_recipe(config: Config) -> Config:
    """The config with the recipe's values filled in.

    The fast recipe replaces the fields of FAST_RECIPE that still hold the
    lecture's default; a value that was set to anything else is kept (so
    `--recipe fast --epochs 3` trains 3 epochs). The lecture's recipe changes
    nothing.
    """
    if config.recipe != "fast":
        return config
    lecture = Config()
    changes = {key: value for key, value in FAST_RECIPE.items() if getattr(config, key) == getattr(lecture, key)}
    return dataclasses.replace(config, **changes)


def accelerated(config: Config) -> bool:
    """Whether to use mixed precision (bfloat16) and XLA: the fast recipe on a GPU.

    On the CPU both make this network slower (XLA by about a third, see
    benchmarks/NOTES.md), so the CPU keeps float32 and TensorFlow's own kernels.
    """
    return config.recipe == "fast" and bool(tf.config.list_logical_devices("GPU"))


def dtype_policy(config: Config) -> str | None:
    """The dtype policy for build_model: "mixed_bfloat16" when accelerated, else None (float32)."""
    return "mixed_bfloat16" if accelerated(config) else None


def make_strategy(config: Config) -> tf.distribute.Strategy:
    """The distribution strategy: TensorFlow's default (one device) or MirroredStrategy.

    "mirrored" replicates the model on every visible GPU, or, on a machine
    without one, on every logical CPU device (one, unless the CPU was split
    with tf.config.set_logical_device_configuration, as the tests do). Each
    step splits the global batch (config.batch_size) between the replicas
    and sums their gradients.
    """
    if config.strategy == "default":
        return tf.distribute.get_strategy()
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return tf.distribute.MirroredStrategy([device.name for device in gpus])
    cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
    # NCCL, MirroredStrategy's default, is for GPUs only.
    return tf.distribute.MirroredStrategy(cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())


@keras.utils.register_keras_serializable(package="classifier")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak` over the first `warmup_epochs`, then linear decay to 0 at `epochs`.

    The schedule depends on the optimizer's step count only, which the
    checkpoint keeps, so a resumed run continues on the same curve.
    `steps_per_epoch` is set by the trainer when training starts.
    """

    def __init__(self, peak: float, epochs: int, warmup_epochs: float = 1.0, steps_per_epoch: int | None = None):
        self.peak = peak
        self.epochs = epochs
        self.warmup_epochs = warmup_epochs
        self.steps_per_epoch = steps_per_epoch

    def __call__(self, step):
        assert self.steps_per_epoch, "the trainer sets steps_per_epoch before the first step"
        epoch = tf.cast(step, tf.float32) / float(self.steps_per_epoch)
        warmup = epoch / self.warmup_epochs
        decay = (self.epochs - epoch) / (self.epochs - self.warmup_epochs)
        return self.peak * tf.clip_by_value(tf.minimum(warmup, decay), 0.0, 1.0)

    def get_config(self) -> dict:
        return {"peak": self.peak, "epochs": self.epochs, "warmup_epochs": self.warmup_epochs,
                "steps_per_epoch": self.steps_per_epoch}


def make_optimizer(config: Config) -> keras.optimizers.Optimizer:
    """The recipe's optimizer: the lecture's RMSprop, or the fast recipe's Adam on a one-cycle schedule."""
    if config.recipe == "fast":
        return keras.optimizers.Adam(learning_rate=OneCycle(config.learning_rate, config.epochs))
    return keras.optimizers.RMSprop(learning_rate=config.learning_rate)


class Trainer:
    """What both trainers share: the model, the recipe, the history, the epoch loop."""

    def __init__(self, model: keras.Model, config: Config, verbose: int | None = None,
                 strategy: tf.distribute.Strategy | None = None):
        self.model = model
        self.config = config
        # The model must have been built under this strategy's scope; the
        # optimizer's variables are made under it too.
        self.strategy = strategy or tf.distribute.get_strategy()
        with self.strategy.scope():
            self.optimizer = make_optimizer(config)
        self.augment = config.recipe == "fast"
        self.jit_compile = accelerated(config)
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
        if isinstance(schedule := self.optimizer._learning_rate, OneCycle):
            schedule.steps_per_epoch = math.ceil(len(train) / self.config.batch_size)
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
        # Under MirroredStrategy, compile must run in its scope; fit then splits each batch between the replicas.
        with self.strategy.scope():
            self.model.compile(
                optimizer=self.optimizer,
                loss=self.loss_fn,
                metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                jit_compile=self.jit_compile,
            )

    def _run_epoch(self, epoch: int, train: Split, val: Split) -> dict:
        # The order comes from epoch_order rather than fit's own shuffle, whose
        # state lives in the process and would be lost on a resume.
        order = epoch_order(self.config.seed, epoch, len(train))
        images = train.images[order]
        if self.augment:
            flips = epoch_flips(self.config.seed, epoch, len(train))
            images[flips] = images[flips, :, ::-1]
        result = self.model.fit(
            images,
            train.labels[order],
            batch_size=self.config.batch_size,
            initial_epoch=epoch,
            epochs=epoch + 1,
            shuffle=False,
            validation_data=(val.images, val.labels),
            validation_batch_size=self.config.eval_batch_size,
            verbose=self.verbose,
            callbacks=[_RunProgress(self.config.epochs)],
        )
        return {key: result.history[key][-1] for key in HISTORY_KEYS}


class _RunProgress(keras.callbacks.ProgbarLogger):
    """fit's progress bar, counting epochs of the whole run ("Epoch 2/5", not fit's "2/2")."""

    def __init__(self, total_epochs: int):
        super().__init__()
        self._total_epochs = total_epochs

    def set_params(self, params):
        super().set_params(params)
        self.epochs = self._total_epochs


class TapeTrainer(Trainer):
    """Lecture 1.3: a `tf.data` pipeline and a `GradientTape` step under `tf.function`.

    The step runs in every replica through `strategy.run` (one replica with
    the default strategy); each replica returns its sums, which are reduced
    across replicas before they reach the metrics. The loop over an epoch's
    batches runs inside one `tf.function` too, which saves a Python round
    trip per step (benchmarks/NOTES.md).
    """

    def _prepare(self, train: Split, val: Split) -> None:
        self.train_loss = keras.metrics.Mean(name="loss")
        self.train_accuracy = keras.metrics.Mean(name="accuracy")
        self.val_loss = keras.metrics.Mean(name="val_loss")
        self.val_accuracy = keras.metrics.Mean(name="val_accuracy")
        # Per-image losses: a replica divides its sum by the GLOBAL batch size,
        # so that the gradients summed over replicas are those of the mean loss.
        self.per_image_loss = keras.losses.SparseCategoricalCrossentropy(reduction=None)
        with self.strategy.scope():
            self.optimizer.build(self.model.trainable_variables)
        self._replica_train_step = tf.function(self._replica_train_step_eager, jit_compile=self.jit_compile)
        self._replica_val_step = tf.function(self._replica_val_step_eager, jit_compile=self.jit_compile)
        # reduce_retracing: every epoch brings a new dataset of the same element spec.
        self._train_epoch = tf.function(self._train_epoch_eager, reduce_retracing=True)
        self._val_epoch = tf.function(self._val_epoch_eager, reduce_retracing=True)
        self._train_images = tf.constant(train.images)
        self._train_labels = tf.constant(train.labels)
        self._val_data = self.strategy.experimental_distribute_dataset(
            tf.data.Dataset.from_tensor_slices((val.images, val.labels))
            .batch(self.config.eval_batch_size)
            .prefetch(tf.data.AUTOTUNE)
        )

    def _replica_train_step_eager(self, images, labels):
        global_count = tf.distribute.get_replica_context().all_reduce("sum", tf.cast(tf.shape(labels)[0], tf.float32))
        with tf.GradientTape() as tape:
            probs = self.model(images, training=True)
            losses = self.per_image_loss(labels, probs)
            loss = tf.reduce_sum(losses) / global_count
        gradients = tape.gradient(loss, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.model.trainable_variables))
        return _sums(losses, labels, probs)

    def _replica_val_step_eager(self, images, labels):
        probs = self.model(images, training=False)
        return _sums(self.per_image_loss(labels, probs), labels, probs)

    def _train_epoch_eager(self, batches):
        for images, labels in batches:
            sums = self.strategy.run(self._replica_train_step, args=(images, labels))
            _update(self.strategy, sums, self.train_loss, self.train_accuracy)

    def _val_epoch_eager(self, batches):
        for images, labels in batches:
            sums = self.strategy.run(self._replica_val_step, args=(images, labels))
            _update(self.strategy, sums, self.val_loss, self.val_accuracy)

    def _epoch_batches(self, epoch: int, num_images: int):
        """This epoch's training batches: gathered in epoch order, mirrored where the recipe says."""
        order = epoch_order(self.config.seed, epoch, num_images)
        flips = epoch_flips(self.config.seed, epoch, num_images) if self.augment else np.zeros(num_images, bool)

        def gather(index, flip):
            images = tf.gather(self._train_images, index)
            if self.augment:
                images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
            return images, tf.gather(self._train_labels, index)

        batches = (
            tf.data.Dataset.from_tensor_slices((order, flips))
            .batch(self.config.batch_size)
            .map(gather)
            .prefetch(tf.data.AUTOTUNE)
        )
        return self.strategy.experimental_distribute_dataset(batches)

    def _run_epoch(self, epoch: int, train: Split, val: Split) -> dict:
        for metric in (self.train_loss, self.train_accuracy, self.val_loss, self.val_accuracy):
            metric.reset_state()
        steps = -(-len(train) // self.config.batch_size)
        if self.verbose:
            print(f"Epoch {epoch + 1}/{self.config.epochs}")
        bar = keras.utils.Progbar(steps, verbose=self.verbose, stateful_metrics=["loss", "accuracy"])
        self._train_epoch(self._epoch_batches(epoch, len(train)))
        bar.update(steps, [("loss", self.train_loss.result()), ("accuracy", self.train_accuracy.result())])
        self._val_epoch(self._val_data)
        metrics = {
            "loss": self.train_loss.result(),
            "accuracy": self.train_accuracy.result(),
            "val_loss": self.val_loss.result(),
            "val_accuracy": self.val_accuracy.result(),
        }
        if self.verbose:
            print(f"  val_loss: {float(metrics['val_loss']):.4f} - val_accuracy: {float(metrics['val_accuracy']):.4f}")
        return metrics


def _sums(losses, labels, probs):
    """A replica's sums: loss, correct predictions and images."""
    predicted = tf.argmax(probs, axis=-1, output_type=labels.dtype)
    correct = tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float32))
    return tf.reduce_sum(tf.cast(losses, tf.float32)), correct, tf.cast(tf.shape(labels)[0], tf.float32)


def _update(strategy, sums, loss_metric, accuracy_metric) -> None:
    """Add the replicas' sums to a loss and an accuracy Mean, weighted by images."""
    loss_sum, correct, count = (strategy.reduce("SUM", value, axis=None) for value in sums)
    loss_metric.update_state(tf.math.divide_no_nan(loss_sum, count), sample_weight=count)
    accuracy_metric.update_state(tf.math.divide_no_nan(correct, count), sample_weight=count)


TRAINERS = {"fit": FitTrainer, "tape": TapeTrainer}


def make_trainer(name: str, model: keras.Model, config: Config, verbose: int | None = None,
                 strategy: tf.distribute.Strategy | None = None) -> Trainer:
    """The trainer called `name` ("fit" or "tape") for `model`, built under `strategy`'s scope (default: one device)."""
    return TRAINERS[name](model, config, verbose=verbose, strategy=strategy)
