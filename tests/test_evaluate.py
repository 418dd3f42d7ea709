"""Test metrics and the lecture's cross-checks."""

import numpy as np
import pytest
from tensorflow import keras

from classifier.lecture.split import Split
from classifier.lecture.evaluate import confusion_matrix, evaluate


def test_confusion_matrix_counts_true_rows_and_predicted_columns():
    matrix = confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


class FixedModel(keras.Model):
    """A 'model' whose probabilities are chosen by the test."""

    def __init__(self, probs):
        super().__init__(name="fixed")
        self.probs = np.asarray(probs, np.float32)
        self.compile(loss="sparse_categorical_crossentropy", metrics=["sparse_categorical_accuracy"])

    def call(self, images, training=False):
        import tensorflow as tf

        index = tf.cast(images[:, 0], tf.int32)
        return tf.gather(tf.constant(self.probs), index)


@pytest.mark.parametrize("direct", [False, True])
def test_evaluate_matches_hand_computed_values(direct):
    probs = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1]]
    labels = np.array([0, 1, 2, 1], np.int32)
    split = Split(np.arange(4, dtype=np.float32)[:, None], labels)
    metrics = evaluate(FixedModel(probs), split, num_classes=3, batch_size=2, direct=direct)
    expected_loss = -np.mean(np.log([0.7, 0.8, 0.4, 0.3]))
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["argmax_accuracy"] == pytest.approx(0.75)
    assert metrics["probabilities_sum_to_one"] is True
    assert metrics["per_class_accuracy"] == [1.0, 0.5, 1.0]
    assert metrics["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]


def test_probabilities_that_do_not_sum_to_one_are_reported():
    split = Split(np.zeros((1, 1), np.float32), np.array([0], np.int32))
    metrics = evaluate(FixedModel([[0.5, 0.2, 0.1]]), split, num_classes=3, direct=True)
    assert metrics["probabilities_sum_to_one"] is False
