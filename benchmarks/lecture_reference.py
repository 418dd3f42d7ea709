"""The lecture's Fashion-MNIST classifier (1.2), written as the lecture writes it.

This is the baseline `invoke bench` measures the lab against, so it is kept
apart from the `classifier` package and deliberately does what the lecture
does: float64 images from `x / 255.0`, `Sequential` with `model.add`, RMSprop,
`model.fit(..., batch_size=32, validation_split=0.2)` in one call, then
`model.evaluate` and `model.predict` with their default batch size of 32.

Two things differ from the lecture, neither on the measured path: the files
are read from a folder (the lecture's `keras.datasets.fashion_mnist.load_data()`
downloads them; its reading code is copied below), and a Keras callback times
each epoch so the benchmark can leave out the first one (tracing).

    python benchmarks/lecture_reference.py --data-dir data --limit 6000 --epochs 2 --json out.json
"""

import argparse
import gzip
import json
import os
import time

import numpy as np
import tensorflow as tf
from tensorflow import keras
from tensorflow.keras import layers


class DurationTime:
    """The lecture's timing context manager."""

    def __init__(self, context):
        self.context = context

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc_info):
        self.seconds = time.perf_counter() - self.start
        print(f"[{self.context}] {self.seconds:.2f} s")


class EpochTimer(keras.callbacks.Callback):
    """Seconds per epoch (training plus validation), as the lab's trainers record them."""

    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)


def gpu_config():
    gpus = tf.config.experimental.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)


def load_data(folder):
    """keras.datasets.fashion_mnist.load_data(), reading from `folder` instead of downloading."""
    files = ["train-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"]
    paths = [os.path.join(folder, name) for name in files]
    with gzip.open(paths[0], "rb") as lbpath:
        y_train = np.frombuffer(lbpath.read(), np.uint8, offset=8)
    with gzip.open(paths[1], "rb") as imgpath:
        x_train = np.frombuffer(imgpath.read(), np.uint8, offset=16).reshape(len(y_train), 28, 28)
    with gzip.open(paths[2], "rb") as lbpath:
        y_test = np.frombuffer(lbpath.read(), np.uint8, offset=8)
    with gzip.open(paths[3], "rb") as imgpath:
        x_test = np.frombuffer(imgpath.read(), np.uint8, offset=16).reshape(len(y_test), 28, 28)
    return (x_train, y_train), (x_test, y_test)


def load_dataset(folder, limit):
    (x_train, y_train), (x_test, y_test) = load_data(folder)
    x_train, x_test = x_train / 255.0, x_test / 255.0
    x_train, x_test = x_train[..., np.newaxis], x_test[..., np.newaxis]
    if limit:
        x_train, y_train = x_train[:limit], y_train[:limit]
    print("Load dataset:", x_train.shape, x_test.shape)
    return (x_train, y_train), (x_test, y_test)


def create_model(input_shape, num_classes, use_add=True):
    model = keras.Sequential(name="tf-classifier")
    model.add(layers.Input(shape=input_shape))
    model.add(layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1"))
    model.add(layers.MaxPool2D(pool_size=(2, 2), name="pooling1"))
    model.add(layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2"))
    model.add(layers.MaxPool2D(pool_size=(2, 2), name="pooling2"))
    model.add(layers.Flatten(name="flatten"))
    model.add(layers.Dense(100, activation="relu", name="dense1"))
    model.add(layers.Dropout(0.2, name="dropout"))
    model.add(layers.Dense(num_classes, activation="softmax", name="dense2"))
    return model


def train_model(model, x_train, y_train, epochs):
    model.compile(optimizer=keras.optimizers.RMSprop(),
                  loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=["accuracy"])
    timer = EpochTimer()
    history = model.fit(x_train, y_train, batch_size=32, epochs=epochs, validation_split=0.2,
                        verbose=2, callbacks=[timer])
    return history, timer.seconds


def test_model(model, x_test, y_test):
    test_loss, test_acc = model.evaluate(x_test, y_test, verbose=0)
    probs = model.predict(x_test, verbose=0)
    argmax_acc = np.mean(np.argmax(probs, axis=1) == y_test)
    return test_loss, test_acc, argmax_acc


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data", help="folder holding fashion_mnist/")
    parser.add_argument("--limit", type=int, default=0, help="first N training images (0: all)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", default="", help="write the measurements here")
    args = parser.parse_args()

    gpu_config()
    keras.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = load_dataset(os.path.join(args.data_dir, "fashion_mnist"), args.limit)
    model = create_model(x_train.shape[1:], 10)
    with DurationTime("training") as train_timer:
        history, epoch_seconds = train_model(model, x_train, y_train, args.epochs)
    # The first evaluation traces predict(); the second one is the one measured.
    test_model(model, x_test, y_test)
    with DurationTime("evaluation") as eval_timer:
        test_loss, test_acc, argmax_acc = test_model(model, x_test, y_test)
    print(f"test loss {test_loss:.4f}, test accuracy {test_acc:.4f}, argmax accuracy {argmax_acc:.4f}")
    if args.json:
        result = {
            "train_images": int(round(len(y_train) * 0.8)),
            "epoch_seconds": epoch_seconds,
            "train_seconds": train_timer.seconds,
            "eval_images": int(len(y_test)),
            "eval_seconds": eval_timer.seconds,
            "test_accuracy": float(test_acc),
            "val_accuracy": float(history.history["val_accuracy"][-1]),
        }
        # Peak memory is read from outside by the benchmark (classifier/machinery/measure.py), alike for every subject.
        with open(args.json, "w", encoding="utf-8") as stream:
            json.dump(result, stream)


if __name__ == "__main__":
    main()
