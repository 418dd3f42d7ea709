"""Evaluation on the test set, with the lecture's cross-checks.

`evaluate()` gives Keras' test loss and accuracy, then recomputes the accuracy
by hand from the argmax of the predicted probabilities (which must sum to 1),
and adds per-class accuracy and a confusion matrix. The `tape` trainer's
models are evaluated by calling the model directly (lecture 1.3) rather than
through `model.evaluate`/`model.predict`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow import keras

from classifier.lecture.split import Split


def predict_keras(model: keras.Model, split: Split, batch_size: int) -> tuple[float, float, np.ndarray]:
    """Lecture 1.2: `evaluate()` for loss and accuracy, `predict()` for probabilities."""
    loss, accuracy = model.evaluate(split.images, split.labels, batch_size=batch_size, verbose=0)
    probs = model.predict(split.images, batch_size=batch_size, verbose=0)
    return float(loss), float(accuracy), probs


def predict_direct(model: keras.Model, split: Split, batch_size: int) -> tuple[float, float, np.ndarray]:
    """Lecture 1.3: call the model on batches under `tf.function`; loss and accuracy by hand."""
    call = tf.function(lambda images: model(images, training=False), reduce_retracing=True)
    probs = np.concatenate(
        [call(images).numpy() for images in tf.data.Dataset.from_tensor_slices(split.images).batch(batch_size)]
    )
    loss = float(keras.losses.SparseCategoricalCrossentropy()(split.labels, probs))
    accuracy = float(np.mean(np.argmax(probs, axis=1) == split.labels))
    return loss, accuracy, probs


def evaluate(model: keras.Model, split: Split, num_classes: int, batch_size: int = 256, direct: bool = False) -> dict:
    """Test metrics for `model` on `split`.

    Args:
        model: a trained model whose output is softmax probabilities.
        split: the test images and labels.
        num_classes: number of classes (rows and columns of the confusion matrix).
        batch_size: images per step; does not change the numbers.
        direct: call the model directly (tape trainer) instead of evaluate/predict.

    Returns:
        {"loss", "accuracy", "argmax_accuracy", "probabilities_sum_to_one",
         "per_class_accuracy", "confusion_matrix", "num_images"}.
    """
    loss, accuracy, probs = (predict_direct if direct else predict_keras)(model, split, batch_size)
    sums_to_one = bool(np.allclose(probs.sum(axis=1), 1.0, atol=1e-4))
    predicted = np.argmax(probs, axis=1)
    matrix = confusion_matrix(split.labels, predicted, num_classes)
    per_class = np.divide(
        np.diag(matrix), matrix.sum(axis=1), out=np.zeros(num_classes), where=matrix.sum(axis=1) > 0
    )
    return {
        "loss": loss,
        "accuracy": accuracy,
        "argmax_accuracy": float(np.mean(predicted == split.labels)),
        "probabilities_sum_to_one": sums_to_one,
        "per_class_accuracy": [float(value) for value in per_class],
        "confusion_matrix": matrix.tolist(),
        "num_images": int(len(split)),
    }


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with true classes as rows and predicted classes as columns."""
    flat = np.asarray(labels, dtype=np.int64) * num_classes + np.asarray(predicted, dtype=np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
