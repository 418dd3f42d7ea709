"""The lecture's network, built three ways, behind one registry.

All three give the same layers, names and parameter count (lecture 1.2/1.3):
Conv2D 32 -> MaxPool -> Conv2D 64 -> MaxPool -> Flatten -> Dense 100 ->
Dropout 0.2 -> Dense num_classes softmax, named "tf-classifier".

    model = build_model("functional", input_shape=(32, 32, 3), num_classes=10)
"""

from __future__ import annotations

from typing import Callable

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


MODELS: dict[str, Callable[..., keras.Model]] = {
    "sequential_add": sequential_add,
    "sequential_list": sequential_list,
    "functional": functional,
}


def build_model(name: str, input_shape, num_classes: int) -> keras.Model:
    """Build a registered model for images of `input_shape` and `num_classes` classes.

    Args:
        name: a key of MODELS.
        input_shape: (height, width, channels) of one image.
        num_classes: size of the softmax output.

    Returns:
        An uncompiled keras.Model.
    """
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; accepted: {', '.join(MODELS)}")
    return MODELS[name](tuple(input_shape), int(num_classes))
