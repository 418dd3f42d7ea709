"""Many of the lecture's training steps per call into TensorFlow: the lab's speed around the lecture's step.

    trainer = make_trainer(config, model, optimizer)   # distribute.py: on one device, a StepsPerCallTapeTrainer for tape

The lecture's tape loop calls its `@tf.function` step from Python once per
batch: every step pays Python's iterator `next`, the function call's argument
matching and its hand-over to TensorFlow's runtime, about 0.5 to 1 ms of a 9 to 13 ms step
at batch 32 on two cores. `StepsPerCallTapeTrainer` keeps the lecture's step
(`TapeTrainer.train_batch_graph`, unchanged) and calls it STEPS_PER_CALL times
inside one graph, reading the batches from the same iterator the lecture's
`for` loop would create, so the data order, the arithmetic and the weights
are those of the lecture's loop, bit for bit (tests/test_train.py). `fit`
gets the same through Keras' own `steps_per_execution` (FitTrainer).

Checkpoints are written after whole epochs either way, so resuming is as
before. Ctrl-C is seen when a call returns, within STEPS_PER_CALL steps.
"""

from __future__ import annotations

import tensorflow as tf

from classifier.lecture.train import TapeTrainer

# About one second of the lecture's network on two cores: long enough that the
# per-call cost is a few per cent of a call, short enough that Ctrl-C stops promptly.
STEPS_PER_CALL = 100


class StepsPerCallTapeTrainer(TapeTrainer):
    """The lecture's tape trainer with STEPS_PER_CALL steps, and a whole validation pass, per graph call."""

    def train_epoch(self, dataset):
        """One pass over the training batches, STEPS_PER_CALL of the lecture's steps per call."""
        # The same iterator the lecture's `for x_batch, y_batch in dataset` creates: the same shuffled order.
        iterator = iter(dataset)
        steps = tf.constant(STEPS_PER_CALL)
        while bool(self._train_steps(iterator, steps)):
            pass

    @tf.function
    def _train_steps(self, iterator, steps):
        """Up to `steps` of the lecture's training steps; returns False once the iterator is exhausted."""
        more = tf.constant(True)
        for _ in tf.range(steps):
            batch = iterator.get_next_as_optional()
            more = batch.has_value()
            if not more:
                break
            x_batch, y_batch = batch.get_value()
            self.train_batch_graph(x_batch, y_batch)
        return more

    @tf.function
    def validate_epoch(self, val_dataset):
        """The lecture's validation pass, in one graph (a few dozen batches of eval_batch_size)."""
        TapeTrainer.validate_epoch(self, val_dataset)
