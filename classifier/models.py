"""The lecture's network, built three ways, and the fast recipe's network, behind one registry.

The three lecture builders give the same layers, names and parameter count
(lecture 1.2/1.3): Conv2D 32 -> MaxPool -> Conv2D 64 -> MaxPool -> Flatten ->
Dense 100 -> Dropout 0.2 -> Dense num_classes softmax, named "tf-classifier".
`fast_cnn` is the `--recipe fast` network (see benchmarks/NOTES.md).

    model = build_model("functional", input_shape=(32, 32, 3), num_classes=10)
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf
from tensorflow import keras
from tensorflow.keras import layers

from classifier.config import UserError

MODEL_NAME = "tf-classifier"


def _layers(num_classes: int) -> list[keras.layers.Layer]:
    """The lecture's layers, in order, each with its lecture name."""
    return [
        layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1"),
        layers.MaxPool2D(pool_size=(2, 2), name="pooling1"),
        layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2"),
        layers.MaxPool2D(pool_size=(2, 2), name="pooling2"),
        layers.Flatten(name="flatten"),
        layers.Dense(100, activation="relu", name="dense1"),
        layers.Dropout(0.2, name="dropout"),
        layers.Dense(num_classes, activation="softmax", name="dense2"),
    ]


def sequential_add(input_shape, num_classes: int) -> keras.Model:
    """Sequential, one `model.add()` per layer (the lecture's `use_add=True`)."""
    model = keras.Sequential(name=MODEL_NAME)
    # The input shape is given so that summary() works before any data flows.
    model.add(layers.Input(shape=input_shape))
    for layer in _layers(num_classes):
        model.add(layer)
    return model


def sequential_list(input_shape, num_classes: int) -> keras.Model:
    """Sequential from a list of layers (the lecture's `use_add=False`)."""
    return keras.Sequential([layers.Input(shape=input_shape), *_layers(num_classes)], name=MODEL_NAME)


def functional(input_shape, num_classes: int) -> keras.Model:
    """The Functional API: each layer called on the previous tensor (lecture 1.3)."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for layer in _layers(num_classes):
        x = layer(x)
    return keras.Model(inputs=inputs, outputs=x, name=MODEL_NAME)


def fast_cnn(input_shape, num_classes: int, dtype_policy: str | None = None) -> keras.Model:
    """The fast recipe's network: the lecture's two convolution stages, batch-normalized, with a wider head.

    Batch normalization after the second convolution lets Adam take large
    steps early in the one-cycle schedule; after the first one it would cost
    a third more time on a 2-core CPU for little gain (benchmarks/NOTES.md).
    The wider dense layer with more dropout uses the extra epochs that the
    larger batch buys. At inference it answers for each image and its mirror
    image and averages the two (MirrorTwins, TwinAverage). `dtype_policy="mixed_bfloat16"` computes in bfloat16
    on a GPU; the softmax stays float32, so the loss is computed in float32.
    """
    policy = dtype_policy or keras.config.dtype_policy().name
    inputs = keras.Input(shape=input_shape, name="image")
    x = MirrorTwins(name="mirror_twins")(inputs)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", dtype=policy, name="conv1")(x)
    x = layers.MaxPool2D(pool_size=(2, 2), dtype=policy, name="pooling1")(x)
    # No bias: batch normalization's beta does its job. Momentum 0.9 rather
    # than Keras' 0.99, so that the moving statistics keep up with a short run.
    x = layers.Conv2D(64, 3, padding="same", use_bias=False, dtype=policy, name="conv2")(x)
    x = layers.BatchNormalization(momentum=0.9, dtype=policy, name="norm2")(x)
    x = layers.Activation("relu", dtype=policy, name="relu2")(x)
    x = layers.MaxPool2D(pool_size=(2, 2), dtype=policy, name="pooling2")(x)
    x = layers.Flatten(dtype=policy, name="flatten")(x)
    x = layers.Dense(256, activation="relu", dtype=policy, name="dense1")(x)
    x = layers.Dropout(0.4, dtype=policy, name="dropout")(x)
    x = layers.Dense(num_classes, activation="softmax", dtype="float32", name="dense2")(x)
    outputs = TwinAverage(name="twin_average")(x)
    return keras.Model(inputs=inputs, outputs=outputs, name="fast-classifier")


@keras.utils.register_keras_serializable(package="classifier")
class MirrorTwins(layers.Layer):
    """At inference, append every image's left-right mirror image to the batch; in training, pass through.

    With TwinAverage at the end this is test-time augmentation: the model's
    answer is the mean of its answers for an image and its mirror image,
    which the fast recipe's training (random mirroring) has taught it to read.
    """

    def call(self, images, training=None):
        if training:
            return images
        return tf.concat([images, tf.reverse(images, axis=[2])], axis=0)


@keras.utils.register_keras_serializable(package="classifier")
class TwinAverage(layers.Layer):
    """At inference, average the probabilities of the two halves MirrorTwins made; in training, pass through."""

    def call(self, probs, training=None):
        if training:
            return probs
        half = tf.shape(probs)[0] // 2
        return (probs[:half] + probs[half:]) / 2.0


MODELS: dict[str, Callable[..., keras.Model]] = {
    "sequential_add": sequential_add,
    "sequential_list": sequential_list,
    "functional": functional,
    "fast_cnn": fast_cnn,
}

# The builders of the lecture's own network (same layers, names and parameters).
LECTURE_MODELS = ("sequential_add", "sequential_list", "functional")


def build_model(name: str, input_shape, num_classes: int, dtype_policy: str | None = None) -> keras.Model:
    """Build a registered model for images of `input_shape` and `num_classes` classes.

    Args:
        name: a key of MODELS.
        input_shape: (height, width, channels) of one image.
        num_classes: size of the softmax output.
        dtype_policy: a Keras dtype policy such as "mixed_bfloat16" for the
            models that take one (fast_cnn); None keeps float32.

    Returns:
        An uncompiled keras.Model.
    """
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; accepted: {', '.join(MODELS)}")
    if dtype_policy is not None:
        return MODELS[name](tuple(input_shape), int(num_classes), dtype_policy=dtype_policy)
    return MODELS[name](tuple(input_shape), int(num_classes))
