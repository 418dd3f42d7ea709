"""The runtime around training: GPUs, seeds, determinism and timing.

`gpu_config()` is the lecture's: it turns on GPU memory growth, which the
lecturer needed to avoid cuDNN's "No algorithm worked!" on Conv2D.
"""

from __future__ import annotations

import random
import time

import numpy as np
import tensorflow as tf
from tensorflow import keras


class DurationTime:
    """The lecture's timing context manager: prints and keeps the seconds spent.

        with DurationTime("training") as timer:
            model.fit(...)
        timer.seconds
    """

    def __init__(self, context: str, verbose: bool = True):
        self.context = context
        self.verbose = verbose
        self.seconds = 0.0

    def __enter__(self):
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc_info):
        self.seconds = time.perf_counter() - self._start
        if self.verbose:
            print(f"[{self.context}] {self.seconds:.2f} s")
        return False


class EpochTimer(keras.callbacks.Callback):
    """A Keras callback that keeps the seconds of every epoch (for benchmarks)."""

    def __init__(self):
        super().__init__()
        self.epoch_seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(time.perf_counter() - self._start)


def gpu_config() -> list[str]:
    """Turn on memory growth for every GPU and say what was found.

    Returns:
        The names of the GPUs TensorFlow sees (empty on a CPU-only machine).
    """
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        print("[gpu_config] no GPU visible to TensorFlow: training runs on the CPU")
        return []
    try:
        # Memory growth must be the same across GPUs and set before they are used.
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError as error:  # the GPUs were already initialised in this process
        print(f"[gpu_config] memory growth not changed: {error}")
    logical = tf.config.list_logical_devices("GPU")
    print(f"[gpu_config] {len(gpus)} physical GPU(s), {len(logical)} logical GPU(s), memory growth on")
    return [gpu.name for gpu in gpus]


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and TensorFlow, and ask TensorFlow for deterministic ops.

    With deterministic ops the same command on the same machine and software
    gives bit-identical weights; without them some GPU kernels (and reductions
    on several threads) may add up in a different order from run to run.
    """
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def devices() -> list[str]:
    """The devices TensorFlow will place ops on, e.g. ['/physical_device:CPU:0']."""
    return [device.name for device in tf.config.list_physical_devices()]
