"""Several devices around the lecture's trainers: `--strategy mirrored`, and several machines: `--strategy multiworker`.

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

"multiworker" is tf.distribute.MultiWorkerMirroredStrategy: one process per
machine (or several on one, `invoke train --workers 2`), each told by the
TF_CONFIG environment variable who is in the cluster and which one it is.
Every worker runs the same command on the same data; each takes its share of
every global batch, and the gradients are added over the network. Worker 0 is
the chief: only it writes the run folder. The strategy must exist before
TensorFlow runs any op, so train_command makes it first of all
(`start_devices`). A worker that dies or cannot be reached stops the others
with one line (`collective_failures`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json

import tensorflow as tf
from tensorflow import keras

from classifier.config import Config, UserError
from classifier.lecture.runtime import gpu_config
from classifier.lecture.train import FitTrainer, TapeTrainer
from classifier.machinery.cluster import worker_role
from classifier.machinery.recipes import build_model, make_loss, make_optimizer, steps_per_epoch, use_mixed_precision
from classifier.machinery.runs import resume_command
from classifier.machinery.steps import STEPS_PER_CALL, StepsPerCallTapeTrainer

# Seconds a collective operation (adding the workers' gradients) may wait for
# the others before it fails. A lost worker then stops the others with an
# error instead of leaving them waiting for ever. The first step of a run
# waits while every worker traces its graph, which takes a few seconds on 2
# busy cores, hence the margin (a dead worker is usually noticed at once: its connection is refused).
COLLECTIVE_TIMEOUT_SECONDS = 120


def start_devices(config: Config) -> tuple[tf.distribute.Strategy | None, list]:
    """The lecture's gpu_config(), after the multi-worker strategy where there is one.

    MultiWorkerMirroredStrategy configures TensorFlow's runtime for the
    cluster, which is possible only before the first op, so it comes first.

    Returns:
        (the multi-worker strategy, or None for make_strategy to choose later; gpu_config()'s GPUs).
    """
    strategy = make_multiworker_strategy() if config.strategy == "multiworker" else None
    return strategy, gpu_config()


@contextlib.contextmanager
def collective_failures(config: Config, run, epochs_done):
    """Around training: a worker that stopped or cannot be reached becomes one line saying how to resume.

    The collective ops time out (COLLECTIVE_TIMEOUT_SECONDS) rather than wait
    for ever; the run (a lifecycle.Run) is marked interrupted. Other
    strategies' errors pass through unchanged.
    """
    try:
        yield
    except tf.errors.OpError as error:
        if config.strategy != "multiworker":
            raise
        run.stopped()
        raise UserError(f"a worker stopped or cannot be reached ({type(error).__name__}) after "
                        f"{epochs_done()}/{config.epochs} epoch(s); continue with: "
                        f"{resume_command(run.checkpoint_folder.parent)} on every worker") from None


def make_strategy(config: Config) -> tf.distribute.Strategy:
    """TensorFlow's default strategy (one device), a MirroredStrategy over the visible devices, or the multi-worker one.

    For "multiworker" call `make_multiworker_strategy` before any other TensorFlow op; this returns it.
    """
    if config.strategy == "default":
        return tf.distribute.get_strategy()
    if config.strategy == "multiworker":
        return make_multiworker_strategy()
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return tf.distribute.MirroredStrategy([device.name for device in gpus])
    cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
    # NCCL, MirroredStrategy's default, is for GPUs only.
    return tf.distribute.MirroredStrategy(cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())


_MULTIWORKER: list[tf.distribute.Strategy] = []


def make_multiworker_strategy() -> tf.distribute.Strategy:
    """The process's MultiWorkerMirroredStrategy, made on the first call (before any other TensorFlow op).

    Raises:
        UserError: TF_CONFIG is missing or does not name this worker in its cluster.
    """
    if _MULTIWORKER:
        return _MULTIWORKER[0]
    worker_count, _ = worker_role()  # a bad TF_CONFIG was answered before TensorFlow loaded; this reads it
    # Memory growth, as gpu_config() does, must be set before the strategy initializes the GPUs.
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=COLLECTIVE_TIMEOUT_SECONDS)
    strategy = _MultiWorkerStrategy(communication_options=options)
    print(f"[multiworker] worker {strategy.cluster_resolver.task_id} of {worker_count}, "
          f"{strategy.num_replicas_in_sync} replica(s) in sync", flush=True)
    _MULTIWORKER.append(strategy)
    return strategy


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files: always, except on workers 1, 2, ... of a multi-worker run."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in ("chief", None) or (resolver.task_type == "worker" and resolver.task_id == 0)


def check_same_data(strategy: tf.distribute.Strategy, hashes: dict[str, str]) -> None:
    """Every worker compares its data files' SHA-256 with the others' before the first step.

    Each worker has verified its files against the dataset's published
    hashes; this also catches workers that read other files (another
    dataset version or cache). The fingerprint is 62 bits of the SHA-256 of
    the sorted {file: SHA-256}, gathered from every worker.

    Raises:
        UserError: a worker's files differ from the chief's.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    digest = hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).digest()
    fingerprint = int.from_bytes(digest[:8], "big") >> 2
    mine = strategy.run(lambda: tf.constant([fingerprint], tf.int64))
    everyone = [int(value) for value in strategy.gather(mine, axis=0).numpy()]
    if any(value != everyone[0] for value in everyone):
        differing = [index for index, value in enumerate(everyone) if value != everyone[0]]
        raise UserError(f"the data files differ between workers (replica(s) {differing} differ from the chief's); "
                        "import the same files on every machine with: invoke data --from ...")
    print(f"[multiworker] the same data on all {len(everyone)} replicas: fingerprint {everyone[0]:016x}", flush=True)


class _MultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy whose `reduce` takes what Keras 3's `fit` gives it.

    Keras 3.15 calls `reduce` with a whole (images, labels) batch and with
    scalar metric results along axis 0; MirroredStrategy accepts both, the
    multi-worker strategy (TensorFlow 2.21) accepts one tensor of rank >= 1
    only. Reducing each part on its own, and a scalar along no axis, is what
    the single-machine strategy does.
    """

    def reduce(self, reduce_op, value, axis):
        def reduce_one(part):
            first = part.values[0] if isinstance(part, tf.distribute.DistributedValues) else part
            rank = getattr(getattr(first, "shape", None), "rank", None)
            return super(_MultiWorkerStrategy, self).reduce(reduce_op, part, axis if rank else None)

        return tf.nest.map_structure(reduce_one, value)


def build_model_and_optimizer(config: Config, image_shape, num_classes: int, num_train: int,
                              strategy: tf.distribute.Strategy | None = None):
    """The recipe's model and optimizer, built in the recipe's precision; returns (model, optimizer, policy name).

    The one place `invoke train` and the benchmarks build them, so that a
    benchmark measures what a training run computes. Keras's precision policy
    is global: it is set only while the model is built (its layers keep their
    own), so a model built later in the same Python, as a notebook or a test
    builds one after a fast run, is float32 again.
    """
    previous = keras.mixed_precision.global_policy()
    policy = "mixed_bfloat16" if use_mixed_precision(config) else "float32"
    keras.mixed_precision.set_global_policy(policy)
    try:
        with (strategy or tf.distribute.get_strategy()).scope():
            model = build_model(config.model, image_shape, num_classes)
            optimizer = make_optimizer(config, steps_per_epoch(num_train, config.batch_size))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    return model, optimizer, policy


def make_trainer(config: Config, model: keras.Model, optimizer, strategy: tf.distribute.Strategy | None = None,
                 callbacks=(), verbose: int | None = None):
    """The trainer config.trainer names, for a model built under `strategy`'s scope."""
    strategy = strategy or tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync > 1:
        # Several replicas keep the lecture's one step per call (the collective timeouts are set for it).
        if config.trainer == "tape":
            return MirroredTapeTrainer(model, optimizer, config, strategy, callbacks=callbacks, verbose=verbose)
        return FitTrainer(model, optimizer, config, callbacks=callbacks, verbose=verbose, loss=make_loss(config))
    # On one device, STEPS_PER_CALL of the lecture's steps per call into TensorFlow (steps.py).
    if config.trainer == "tape":
        return StepsPerCallTapeTrainer(model, optimizer, config, callbacks=callbacks, verbose=verbose,
                                       loss=make_loss(config))
    return FitTrainer(model, optimizer, config, callbacks=callbacks, verbose=verbose, loss=make_loss(config),
                      steps_per_execution=STEPS_PER_CALL)


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
            super().__init__(model, optimizer, config, callbacks=callbacks, verbose=verbose, loss=make_loss(config))
            optimizer.build(model.trainable_variables)
            # Accuracy arrives as each batch's fraction of correct answers, so it is averaged like the loss.
            self.train_accuracy = keras.metrics.Mean(name="accuracy")
            self.val_accuracy = keras.metrics.Mean(name="val_accuracy")
        self.per_image_loss = make_loss(config, reduction=None)

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
