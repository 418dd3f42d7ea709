"""Recipes: the optimizer and schedule around the lecture's trainers, and the fast recipe's network.

The lecture's recipe is RMSprop at 0.001 on the lecture's network. The fast
recipe (`invoke train --recipe fast`; its settings are one dict,
classifier/registry.py HYP["fast"]) is measured by `invoke bench --target
lecture,0.935 --budget 180` (benchmarks/NOTES.md):

    model fast_cnn, batch 128, 16 epochs, Adam, linear warm-up over the first
    epoch to 0.003 then cosine decay, 10% validation, labels smoothed by 0.1,
    random left-right mirroring in training, the mirror image's answer
    averaged in at test time; mixed bfloat16 on a GPU or on a CPU that
    computes bfloat16 in hardware, float32 under --numerics portable
    (use_mixed_precision).

The saved model is built from Keras' own layers and is not compiled, so a
`model.keras` of either recipe loads with plain `keras.models.load_model`,
without this package (tests/test_recipes.py loads one that `invoke train` wrote).
"""

from __future__ import annotations

import math

import tensorflow as tf
from tensorflow import keras
from tensorflow.keras import layers

from classifier.config import Config, UserError
from classifier.machinery import numerics
from classifier.registry import HYP
from classifier.lecture.models import BUILDS


def make_optimizer(config: Config, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The recipe's optimizer: the lecture's RMSprop (PortableRMSprop under --numerics portable), or Adam on a schedule.

    Args:
        config: the resolved config (recipe, learning_rate, epochs).
        steps_per_epoch: optimizer steps in one epoch (the schedule is counted in steps).
    """
    if config.recipe != "fast":
        portable = config.numerics == "portable"
        return (PortableRMSprop if portable else keras.optimizers.RMSprop)(learning_rate=config.learning_rate)
    # The schedule depends on the optimizer's step count only, which the
    # checkpoint keeps, so a resumed run continues on the same curve.
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        warmup_target=config.learning_rate,
        warmup_steps=steps_per_epoch * HYP["fast"]["warmup_epochs"],
        decay_steps=max(1, steps_per_epoch * (config.epochs - HYP["fast"]["warmup_epochs"])),
    )
    return keras.optimizers.Adam(learning_rate=schedule)


class PortableRMSprop(keras.optimizers.RMSprop):
    """Keras' RMSprop with its step divided exactly: the lecture's optimizer under `--numerics portable`.

    Keras computes the step as `lr * gradient / sqrt(velocity + epsilon)`.
    TensorFlow's graph optimizer (Grappler's arithmetic optimizer, which
    `fit` runs over every step) turns `a / sqrt(b)` into `a * rsqrt(b)`, and
    Eigen computes rsqrt with the CPU's `rsqrtps` estimate refined by one
    Newton step. The estimate is a table in the CPU, Intel's not AMD's, and
    one Newton step leaves the last bit to it: the same step gave other
    weights on an Intel and an AMD CPU, and under QEMU, which computes
    `rsqrtps` exactly (benchmarks/vendor_probe.py, docs/reproducibility.md).
    `divide_no_nan` is exempt from that rewrite and divides with `divps`,
    which rounds correctly on every CPU; `velocity + epsilon` is never 0, so
    its "no NaN" case never applies and the step is the same formula.
    The lecture's RMSprop has no momentum and is not centred, so neither is
    this one; its slots and checkpoint are Keras' own.
    """

    def update_step(self, gradient, variable, learning_rate):
        lr = keras.ops.cast(learning_rate, variable.dtype)
        gradient = keras.ops.cast(gradient, variable.dtype)
        velocity = self._velocities[self._get_variable_index(variable)]
        self.assign(velocity, velocity * self.rho + keras.ops.square(gradient) * (1 - self.rho))
        denominator = keras.ops.sqrt(velocity + self.epsilon)
        self.assign_sub(variable, keras.ops.divide_no_nan(gradient * lr, denominator))


def make_loss(config: Config, reduction: str | None = "sum_over_batch_size") -> keras.losses.Loss:
    """The recipe's loss: the lecture's SparseCategoricalCrossentropy, or the fast recipe's smoothed one.

    Args:
        config: the resolved config (recipe).
        reduction: Keras' reduction; None gives one loss per image (MirroredStrategy sums them itself).
    """
    if config.recipe != "fast":
        return keras.losses.SparseCategoricalCrossentropy(reduction=reduction)
    return SmoothedSparseCrossentropy(HYP["fast"]["label_smoothing"], reduction=reduction)


class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Sparse categorical cross-entropy against smoothed labels.

    Keras' SparseCategoricalCrossentropy has no label smoothing, so the
    integer labels become one-hot rows for CategoricalCrossentropy's. Only
    training uses it: the saved model is `inference_model`'s uncompiled
    wrapper, so loading it needs nothing from here (tests/test_recipes.py
    loads a model.keras of `invoke train --recipe fast` in a Python without
    this package).
    """

    def __init__(self, label_smoothing: float, reduction: str | None = "sum_over_batch_size",
                 name: str = "smoothed_sparse_crossentropy"):
        super().__init__(reduction=reduction, name=name)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        labels = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
        one_hot = keras.ops.one_hot(labels, keras.ops.shape(y_pred)[-1], dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(one_hot, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self) -> dict:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    return math.ceil(num_images / batch_size)


def fast_cnn(input_shape, num_class: int) -> keras.Model:
    """The fast recipe's network: the lecture's two convolution stages, batch-normalized, with a wider head.

    RandomFlip mirrors images left-right in training only. Batch
    normalization after the second convolution lets Adam take large steps;
    after the first one it would cost a third more time on a 2-core CPU for
    little gain (benchmarks/NOTES.md). Under a mixed-precision policy
    (use_mixed_precision) the softmax stays float32.
    """
    input_tensor = layers.Input(shape=input_shape)
    x = layers.RandomFlip("horizontal", name="mirror")(input_tensor)
    x = layers.Conv2D(filters=32, kernel_size=3, padding="same", activation="relu", name="conv1")(x)
    x = layers.MaxPool2D(pool_size=(2, 2), name="pooling1")(x)
    # No bias: batch normalization's beta does its job. Momentum 0.9 rather
    # than Keras' 0.99, so that the moving statistics keep up with a short run.
    x = layers.Conv2D(filters=64, kernel_size=3, padding="same", use_bias=False, name="conv2")(x)
    x = layers.BatchNormalization(momentum=0.9, name="norm2")(x)
    x = layers.Activation("relu", name="relu2")(x)
    x = layers.MaxPool2D(pool_size=(2, 2), name="pooling2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(units=256, activation="relu", name="dense1")(x)
    x = layers.Dropout(0.4, name="dropout")(x)
    output_tensor = layers.Dense(units=num_class, activation="softmax", dtype="float32", name="dense2")(x)
    return keras.Model(inputs=input_tensor, outputs=output_tensor, name="fast-classifier")


def inference_model(model: keras.Model, config: Config) -> keras.Model:
    """The model that is evaluated and saved: the trained one, or for the fast recipe its mirror average.

    Test-time mirroring: the answer is the mean of the answers for an image and
    its left-right mirror image, which the random mirroring in training has
    taught the network to read. It shares the trained weights. The wrapper is
    not compiled, so the fast recipe is always evaluated by calling the model.
    """
    if config.recipe != "fast":
        return model
    network = _inference_network(model)
    image = layers.Input(shape=model.input_shape[1:], name="image")
    mirrored = keras.ops.flip(image, axis=2)
    average = layers.Average(name="mirror_average")([network(image), network(mirrored)])
    # Not compiled: it is evaluated by calling it, and saved without an
    # optimizer, so that loading it elsewhere needs nothing but Keras.
    return keras.Model(inputs=image, outputs=average, name="fast-classifier-mirrored")


def _inference_network(model: keras.Model) -> keras.Model:
    """The trained layers on a new input, without the training-only mirroring; it shares every weight.

    Two reasons not to save the trained model itself. `fit` compiled it with
    the recipe's smoothed loss, and a nested model's compile config is saved
    and rebuilt even by `load_model(compile=False)`, so model.keras would need
    this package. And RandomFlip mirrors whenever a caller leaves `training`
    out, as `model(images)` and the SavedModel that `model.export` writes do;
    it does nothing at test time, so it is left out. The registry's networks
    are chains of layers, so calling them in order rebuilds the graph.
    """
    x = image = layers.Input(shape=model.input_shape[1:], name="pixels")
    for layer in model.layers:
        if not isinstance(layer, (layers.InputLayer, layers.RandomFlip)):
            x = layer(x)
    return keras.Model(inputs=image, outputs=x, name=model.name)


def use_mixed_precision(config: Config) -> bool:
    """Whether to compute in bfloat16: the fast recipe on a GPU, or on a CPU with bfloat16 in hardware,
    and never under `--numerics portable`.

    On this lab's AVX-512 Xeon (AMX) mixed bfloat16 trains `fast_cnn` 1.3x as
    fast as float32, which is what brings the recipe's 16 epochs to about
    170 s on 2 cores (benchmarks/NOTES.md). A CPU without it converts every operation and is
    slower in bfloat16, so it stays float32. `--numerics portable` promises
    the same weights on other machines, and bfloat16's rounding would be one
    more thing that differs between them, so it is float32 on a GPU as well
    (docs/reproducibility.md). tests/test_gpu_decisions.py describes a GPU to
    this function where no GPU is.
    """
    if config.recipe != "fast" or config.numerics == "portable":
        return False
    if tf.config.list_logical_devices("GPU"):
        return True
    return numerics.native_bfloat16()


def build_model(name: str, input_shape, num_classes: int) -> keras.Model:
    """Build a registered model for images of `input_shape` and `num_classes` classes.

    Args:
        name: one of registry.MODELS: the lecture's three builds, or the fast recipe's fast_cnn.
        input_shape: (height, width, channels) of one image.
        num_classes: size of the softmax output.

    Returns:
        An uncompiled keras.Model.
    """
    builders = {**BUILDS, "fast_cnn": fast_cnn}
    if name not in builders:
        raise UserError(f"unknown model {name!r}; accepted: {', '.join(builders)}")
    return builders[name](tuple(input_shape), int(num_classes))
