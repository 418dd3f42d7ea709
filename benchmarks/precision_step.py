"""The training step alone in float32 and in mixed bfloat16, in one process: what bfloat16 buys on this CPU.

    python benchmarks/precision_step.py --model fast_cnn --batch 128
    python benchmarks/precision_step.py --model sequential_add --batch 32   # the lecture's network

Each policy builds its own copy of the network and runs `--steps` training
steps per `tf.function` call on random images already in memory, so nothing
but the arithmetic is timed. The policies alternate for `--rounds` rounds and
each one's best call counts; the ratio is against float32 from the same run
(benchmarks/NOTES.md, issue 22). On a CPU without bfloat16 in hardware
(no amx_bf16 or avx512_bf16) expect a ratio below 1.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import tensorflow as tf
from tensorflow import keras

from classifier.machinery.recipes import build_model


def images_per_second(policy: str, model_name: str, batch: int, steps: int, rounds: int) -> float:
    """The best of `rounds` calls of `steps` Adam steps, in images per second."""
    keras.mixed_precision.set_global_policy(policy)
    model = build_model(model_name, (28, 28, 1), 10)
    optimizer = keras.optimizers.Adam(1e-3)
    loss = keras.losses.SparseCategoricalCrossentropy()
    rng = np.random.default_rng(0)
    images = tf.constant(rng.random((batch * steps, 28, 28, 1), dtype=np.float32))
    labels = tf.constant(rng.integers(0, 10, batch * steps))

    @tf.function
    def train_steps():
        for step in tf.range(steps):
            x, y = images[step * batch:(step + 1) * batch], labels[step * batch:(step + 1) * batch]
            with tf.GradientTape() as tape:
                value = loss(y, model(x, training=True))
            gradients = tape.gradient(value, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return value

    train_steps()  # tracing
    best = min(_timed(train_steps) for _ in range(rounds))
    keras.mixed_precision.set_global_policy("float32")
    return batch * steps / best


def _timed(call) -> float:
    start = time.perf_counter()
    call().numpy()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fast_cnn", help="a registered Keras model, e.g. fast_cnn, sequential_add")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50, help="training steps per timed call")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two policies")
    args = parser.parse_args(argv)
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for policy in ("float32", "mixed_bfloat16"):
            rate = images_per_second(policy, args.model, args.batch, args.steps, rounds=2)
            best[policy] = max(best.get(policy, 0.0), rate)
    ratio = best["mixed_bfloat16"] / best["float32"]
    print(f"{args.model} batch {args.batch}: float32 {best['float32']:,.0f} images/s, "
          f"mixed_bfloat16 {best['mixed_bfloat16']:,.0f} images/s, ratio {ratio:.2f}x")
    return {**best, "ratio": ratio}


if __name__ == "__main__":
    main()
