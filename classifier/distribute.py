"""Several devices around the lecture's trainers: `--strategy mirrored`.

    strategy = make_strategy(config)
    with strategy.scope():
        model = build_model(...)
    trainer = make_trainer(config, model, optimizer, strategy)

"default" is TensorFlow's one-device strategy and leaves the trainers as the
lecture writes them. "mirrored" replicates the model on every visible GPU (or,
without one, on every logical CPU device, as the tests split the CPU) and
splits each global batch (config.batch_size) between the replicas. `fit`
needs nothing more than being built and compiled under the strategy's scope;
the tape loop gets `MirroredTapeTrainer`, which runs its step in every
replica with `strategy.run` and adds the replicas' results.
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow import keras

from classifier.config import Config
from classifier.train import TRAINERS, TapeTrainer


def make_strategy(config: Config) -> tf.distribute.Strategy:
    """TensorFlow's default strategy (one device) or a MirroredStrategy over the visible devices."""
    if config.strategy == "default":
        return tf.distribute.get_strategy()
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return tf.distribute.MirroredStrategy([device.name for device in gpus])
    cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
    # NCCL, MirroredStrategy's default, is for GPUs only.
    return tf.distribute.MirroredStrategy(cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())


def make_trainer(config: Config, model: keras.Model, optimizer, strategy: tf.distribute.Strategy | None = None,
                 callbacks=(), verbose: int | None = None):
    """The trainer config.trainer names, for a model built under `strategy`'s scope."""
    strategy = strategy or tf.distribute.get_strategy()
    if config.trainer == "tape" and strategy.num_replicas_in_sync > 1:
        return MirroredTapeTrainer(model, optimizer, config, strategy, callbacks=callbacks, verbose=verbose)
    return TRAINERS[config.trainer](model, optimizer, config, callbacks=callbacks, verbose=verbose)


class MirroredTapeTrainer(TapeTrainer):
    """The tape loop with its step run in every replica; the lecture's loop, metrics and history are reused.

    Each replica sums its images' losses and divides by the GLOBAL batch size,
    so that the gradients summed over replicas (apply_gradients under the
    strategy) are those of the mean loss over the whole batch.
    """

    def __init__(self, model, optimizer, config: Config, strategy: tf.distribute.Strategy, callbacks=(),
                 verbose: int | None = None):
        self.strategy = strategy
        with strategy.scope():
            super().__init__(model, optimizer, config, callbacks=callbacks, verbose=verbose)
            optimizer.build(model.trainable_variables)
            # Accuracy arrives as each batch's fraction of correct answers, so it is averaged like the loss.
            self.train_accuracy = keras.metrics.Mean(name="accuracy")
            self.val_accuracy = keras.metrics.Mean(name="val_accuracy")
        self.per_image_loss = keras.losses.SparseCategoricalCrossentropy(reduction=None)

    def make_datasets(self, train_data, val_data):
        dataset, val_dataset = super().make_datasets(train_data, val_data)
        return (self.strategy.experimental_distribute_dataset(dataset),
                self.strategy.experimental_distribute_dataset(val_dataset))

    @tf.function
    def train_batch_graph(self, x_batch, y_batch):
        sums = self.strategy.run(self._replica_train_step, args=(x_batch, y_batch))
        _update(self.strategy, sums, self.train_loss, self.train_accuracy)

    @tf.function
    def validate_batch_graph(self, x_batch, y_batch):
        sums = self.strategy.run(self._replica_validate_step, args=(x_batch, y_batch))
        _update(self.strategy, sums, self.val_loss, self.val_accuracy)

    def _replica_train_step(self, x_batch, y_batch):
        count = tf.cast(tf.shape(y_batch)[0], tf.float32)
        global_count = tf.distribute.get_replica_context().all_reduce("sum", count)
        with tf.GradientTape() as tape:
            predictions = self.model(x_batch, training=True)
            losses = self.per_image_loss(y_batch, predictions)
            loss = tf.reduce_sum(losses) / global_count
        gradients = tape.gradient(loss, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.model.trainable_variables))
        return _sums(losses, y_batch, predictions)

    def _replica_validate_step(self, x_batch, y_batch):
        predictions = self.model(x_batch, training=False)
        return _sums(self.per_image_loss(y_batch, predictions), y_batch, predictions)


def _sums(losses, labels, predictions):
    """A replica's sums: loss, correct predictions, images."""
    predicted = tf.argmax(predictions, axis=-1, output_type=labels.dtype)
    correct = tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float32))
    return tf.reduce_sum(tf.cast(losses, tf.float32)), correct, tf.cast(tf.shape(labels)[0], tf.float32)


def _update(strategy, sums, loss_metric, accuracy_metric) -> None:
    """Add the replicas' sums to a loss Mean and an accuracy Mean, weighted by images."""
    loss_sum, correct, count = (strategy.reduce("SUM", value, axis=None) for value in sums)
    loss_metric.update_state(tf.math.divide_no_nan(loss_sum, count), sample_weight=count)
    accuracy_metric.update_state(tf.math.divide_no_nan(correct, count), sample_weight=count)
