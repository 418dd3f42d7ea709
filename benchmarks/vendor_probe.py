"""One training step of the lecture's network, op by op: a SHA-256 of every op's output.

Two x86-64 CPUs that give different weights under `--numerics portable` differ
in some op of the training step. This probe runs one step under the portable
settings, with seeded weights and one fixed batch, and prints the first 8 hex
digits of the SHA-256 of each layer's forward output, the loss, each gradient
and each weight after RMSprop's update, then the same for single element-wise
ops on fixed inputs (square root, reciprocal, softmax...). Run it on two CPUs,
or natively and under QEMU's user-mode emulator, and compare the lists: the
first line that differs names the op.

    python benchmarks/vendor_probe.py
    qemu-x86_64-static -cpu Haswell-v4 .venv/bin/python benchmarks/vendor_probe.py --dump /tmp/emulated.npz

The emulator computes `rcpps`/`rsqrtps` exactly where hardware returns its own
12-bit approximation, so an op whose output differs under the emulator is an
op that executes those instructions. Native: seconds; emulated: TensorFlow's
import alone takes several minutes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from classifier import registry  # noqa: E402  (after the path fix above)
from classifier.machinery import numerics  # noqa: E402

BATCH_SIZE = 32  # the lecture's batch
SEED = 42


def digest(array) -> str:
    """The first 8 hex digits of the SHA-256 of a float32 array's bytes."""
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()[:8]


def training_step(rmsprop: str) -> list[tuple[str, object]]:
    """(name, output) for every op of one training step of the lecture's network, in order."""
    import numpy as np
    import tensorflow as tf
    from tensorflow import keras

    from classifier.lecture.models import functional
    from classifier.lecture.runtime import seed_everything

    seed_everything(SEED, True)
    rng = np.random.default_rng(SEED)
    images = rng.random((BATCH_SIZE, 28, 28, 1), dtype=np.float32)
    labels = rng.integers(0, 10, BATCH_SIZE)
    model = functional(input_shape=(28, 28, 1), num_class=10)
    # Every layer's output in one forward pass, Dropout in training mode as in fit.
    taps = keras.Model(model.inputs, [layer.output for layer in model.layers[1:]])
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    optimizer = _rmsprop(rmsprop)
    optimizer.build(model.trainable_variables)

    # One graph for the whole step, as `fit` runs it: oneDNN's graph rewrites apply to graphs only.
    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            outputs = taps(images, training=True)
            loss = loss_fn(labels, outputs[-1])
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return outputs, loss, gradients

    outputs, loss, gradients = step(tf.constant(images), tf.constant(labels))
    ops = [(f"forward {layer.name}", out.numpy()) for layer, out in zip(model.layers[1:], outputs)]
    ops.append(("loss", loss.numpy()))
    ops += [(f"gradient {var.path}", grad.numpy()) for var, grad in zip(model.trainable_variables, gradients)]
    ops += [(f"rmsprop {var.path}", var.numpy()) for var in model.trainable_variables]
    return ops


def _rmsprop(kind: str):
    """Keras' RMSprop ("keras") or the lab's portable one ("portable"), at the lecture's learning rate."""
    from tensorflow import keras

    if kind == "portable":
        from classifier.machinery.recipes import PortableRMSprop

        return PortableRMSprop(learning_rate=0.001)
    return keras.optimizers.RMSprop(learning_rate=0.001)


def single_ops() -> list[tuple[str, object]]:
    """(name, output) of element-wise ops on fixed inputs: which of them round differently on this CPU."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(SEED)
    # Magnitudes like RMSprop's velocities and the network's activations, plus 3 (1/3 shows the approximation).
    x = np.concatenate([[3.0], 10.0 ** rng.uniform(-9, 3, 4095)]).astype(np.float32)
    logits = rng.normal(0, 3, (256, 10)).astype(np.float32)
    labels = tf.constant(rng.integers(0, 10, 256))
    single = [
        ("tf.math.sqrt", tf.math.sqrt, x),
        ("tf.math.rsqrt", tf.math.rsqrt, x),
        ("tf.math.reciprocal", tf.math.reciprocal, x),
        ("tf.math.divide 1/x", lambda x: tf.math.divide(1.0, x), x),
        ("tf.math.divide y/sqrt(x)", lambda x: tf.math.divide(tf.reverse(x, [0]), tf.math.sqrt(x)), x),
        ("tf.math.divide_no_nan y/sqrt(x)", lambda x: tf.math.divide_no_nan(tf.reverse(x, [0]), tf.math.sqrt(x)), x),
        ("tf.math.exp", lambda x: tf.math.exp(-x / 1000.0), x[:512]),
        ("tf.math.log", tf.math.log, x),
        ("tf.math.tanh", lambda x: tf.math.tanh(x / 1000.0), x),
        ("tf.math.sigmoid", lambda x: tf.math.sigmoid(x / 1000.0), x),
        ("tf.nn.softmax", tf.nn.softmax, logits),
        ("tf.nn.log_softmax", tf.nn.log_softmax, logits),
        ("sparse softmax cross-entropy", lambda z: tf.nn.sparse_softmax_cross_entropy_with_logits(labels, z), logits),
    ]
    # Each in a graph, as in `fit`, so that oneDNN's rewrites (e.g. of Softmax) apply as in training.
    return [(name, tf.function(function)(tf.constant(value)).numpy()) for name, function, value in single]

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=registry.NUMERICS, default="portable", help="numerics mode")
    parser.add_argument("--dump", type=Path, help="also save every output to this .npz, to compare element by element")
    args = parser.parse_args()
    numerics.apply(args.mode, announce=lambda line: None)
    keras_step, portable_step, singles = training_step("keras"), training_step("portable"), single_ops()
    # The two steps share everything up to the optimizer: only its lines of the second are new.
    portable_update = [(f"{name} (PortableRMSprop)", out) for name, out in portable_step if name.startswith("rmsprop")]
    lines = keras_step + portable_update + singles
    print(json.dumps({"machine": numerics.machine_kind(), "mode": args.mode}))
    for name, output in lines:
        print(f"{digest(output)}  {name}")
    for label, step in (("keras.optimizers.RMSprop", keras_step), ("PortableRMSprop", portable_step)):
        combined = hashlib.sha256("".join(digest(output) for _, output in step).encode()).hexdigest()[:8]
        print(f"{combined}  the training step with {label} (forward to update)")
    if args.dump:
        import numpy as np

        np.savez(args.dump, **{name: np.asarray(output) for name, output in lines})

if __name__ == "__main__":
    main()
