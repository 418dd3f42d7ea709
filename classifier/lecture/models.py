"""The lecture's network, written the three ways the lecture writes it.

    model = functional(input_shape=(32, 32, 3), num_class=10)    # or BUILDS["functional"]

All three give the same layers, names and parameter count (333,526 on 28x28x1
images, 10 classes): Conv2D 32 -> MaxPool -> Conv2D 64 -> MaxPool -> Flatten ->
Dense 100 -> Dropout 0.2 -> Dense num_classes softmax, named "tf-classifier".
The fast recipe's network, and `build_model` that builds any registered one
by name, live in classifier/machinery/recipes.py.
"""

from __future__ import annotations

from tensorflow import keras
from tensorflow.keras import layers

MODEL_NAME = "tf-classifier"


def sequential_add(input_shape, num_class: int) -> keras.Model:
    """Lecture 1.2, `use_add=True`: a Sequential model grown with `model.add()`."""
    model = keras.Sequential(name=MODEL_NAME)
    # The input shape is given so that summary() works before any data flows.
    model.add(layers.Input(shape=input_shape))
    model.add(layers.Conv2D(filters=32, kernel_size=3, padding="same", activation="relu", name="conv1"))
    model.add(layers.MaxPool2D(pool_size=(2, 2), name="pooling1"))
    model.add(layers.Conv2D(filters=64, kernel_size=3, padding="same", activation="relu", name="conv2"))
    model.add(layers.MaxPool2D(pool_size=(2, 2), name="pooling2"))
    model.add(layers.Flatten(name="flatten"))
    model.add(layers.Dense(units=100, activation="relu", name="dense1"))
    model.add(layers.Dropout(0.2, name="dropout"))
    model.add(layers.Dense(units=num_class, activation="softmax", name="dense2"))
    return model


def sequential_list(input_shape, num_class: int) -> keras.Model:
    """Lecture 1.2, `use_add=False`: a Sequential model from a list of layers."""
    return keras.Sequential([
        layers.Input(shape=input_shape),
        layers.Conv2D(filters=32, kernel_size=3, padding="same", activation="relu", name="conv1"),
        layers.MaxPool2D(pool_size=(2, 2), name="pooling1"),
        layers.Conv2D(filters=64, kernel_size=3, padding="same", activation="relu", name="conv2"),
        layers.MaxPool2D(pool_size=(2, 2), name="pooling2"),
        layers.Flatten(name="flatten"),
        layers.Dense(units=100, activation="relu", name="dense1"),
        layers.Dropout(0.2, name="dropout"),
        layers.Dense(units=num_class, activation="softmax", name="dense2"),
    ], name=MODEL_NAME)


def functional(input_shape, num_class: int) -> keras.Model:
    """Lecture 1.3: the Functional API, each layer called on the previous tensor."""
    input_tensor = layers.Input(shape=input_shape)
    x = layers.Conv2D(filters=32, kernel_size=3, padding="same", activation="relu", name="conv1")(input_tensor)
    x = layers.MaxPool2D(pool_size=(2, 2), name="pooling1")(x)
    x = layers.Conv2D(filters=64, kernel_size=3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPool2D(pool_size=(2, 2), name="pooling2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(units=100, activation="relu", name="dense1")(x)
    x = layers.Dropout(0.2, name="dropout")(x)
    output_tensor = layers.Dense(units=num_class, activation="softmax", name="dense2")(x)
    return keras.Model(inputs=input_tensor, outputs=output_tensor, name=MODEL_NAME)


# The lecture's three builds by name (registry.LECTURE_MODELS); recipes.build_model adds the fast recipe's.
BUILDS = {"sequential_add": sequential_add, "sequential_list": sequential_list, "functional": functional}
