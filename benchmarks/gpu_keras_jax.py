"""GPU timing proxy: the lecture's network and the fast recipe's network on CIFAR-10-sized data.

TensorFlow cannot be installed on the lent GPU machine (no network, and its
wheels are too large to carry), but Keras 3 runs the same layers on JAX,
which is there. The numbers are therefore Keras-on-JAX (XLA-compiled, like
TensorFlow with jit_compile=True) and stand in for the TensorFlow GPU image
until a CI GPU runner measures that directly.

    KERAS_BACKEND=jax python3 benchmarks/gpu_keras_jax.py

Prints one line per configuration: images/s and seconds per CIFAR-10 epoch
(50,000 images), the first (compiling) epoch excluded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

NUM_IMAGES = 50_000
SHAPE = (32, 32, 3)


def lecture_network(policy: str) -> keras.Model:
    """The lecture's layers (classifier.lecture.models._layers), float32 or mixed precision."""
    inputs = keras.Input(SHAPE)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", dtype=policy)(inputs)
    x = layers.MaxPool2D(2, dtype=policy)(x)
    x = layers.Conv2D(64, 3, padding="same", activation="relu", dtype=policy)(x)
    x = layers.MaxPool2D(2, dtype=policy)(x)
    x = layers.Flatten(dtype=policy)(x)
    x = layers.Dense(100, activation="relu", dtype=policy)(x)
    x = layers.Dropout(0.2, dtype=policy)(x)
    outputs = layers.Dense(10, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs)


def fast_network(policy: str) -> keras.Model:
    """classifier.machinery.recipes.fast_cnn's training graph (its test-time mirror layers do no work in training)."""
    inputs = keras.Input(SHAPE)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", dtype=policy)(inputs)
    x = layers.MaxPool2D(2, dtype=policy)(x)
    x = layers.Conv2D(64, 3, padding="same", use_bias=False, dtype=policy)(x)
    x = layers.BatchNormalization(momentum=0.9, dtype=policy)(x)
    x = layers.Activation("relu", dtype=policy)(x)
    x = layers.MaxPool2D(2, dtype=policy)(x)
    x = layers.Flatten(dtype=policy)(x)
    x = layers.Dense(256, activation="relu", dtype=policy)(x)
    x = layers.Dropout(0.4, dtype=policy)(x)
    outputs = layers.Dense(10, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs)


def measure(name: str, build, policy: str, optimizer, batch_size: int, epochs: int = 3) -> dict:
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.random((NUM_IMAGES, *SHAPE), dtype=np.float32)
    labels = rng.integers(0, 10, NUM_IMAGES).astype(np.int32)
    model = build(policy)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"], jit_compile=True)
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.fit(images, labels, batch_size=batch_size, epochs=1, verbose=0)
        seconds.append(time.perf_counter() - start)
    steady = float(np.median(seconds[1:]))
    result = {"name": name, "policy": policy, "batch_size": batch_size, "first_epoch_s": round(seconds[0], 2),
              "epoch_s": round(steady, 2), "images_per_s": round(NUM_IMAGES / steady)}
    print(json.dumps(result), flush=True)
    return result


def main() -> int:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
    import jax

    print(json.dumps({"gpu": gpu, "keras": keras.__version__, "backend": keras.backend.backend(),
                      "jax": jax.__version__, "devices": [str(d) for d in jax.devices()]}), flush=True)
    results = [
        measure("lecture recipe", lecture_network, "float32", keras.optimizers.RMSprop(0.001), 32),
        measure("lecture network, batch 512, bf16", lecture_network, "mixed_bfloat16", keras.optimizers.RMSprop(0.001), 512),
        measure("fast network, batch 512, bf16", fast_network, "mixed_bfloat16", keras.optimizers.Adam(0.003), 512),
    ]
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as stream:
            json.dump(results, stream, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
