"""`strategy="mirrored"`: MirroredStrategy over two logical CPU devices matches one device.

The CPU can only be split into logical devices before TensorFlow first
touches its devices, which every other test in this process has done, so
the training runs in a child process that splits it first.

Tolerances. With the dropout rate set to 0 the two runs do the same
arithmetic except for the order of the sums (each replica sums its half of
the batch, then the halves are added), so after 2 epochs (30 steps) their
weights agree to 1e-4 and their losses and accuracies to 1e-4 (measured on
TensorFlow 2.21 CPU: 7e-7 for tape, 3e-6 for fit). That holds for
TensorFlow's own (Eigen) kernels. On CPUs with AVX512_VNNI, AVX512_BF16,
AVX_VNNI or AMX, TensorFlow turns on oneDNN's graph rewrites by default
(TF_ENABLE_ONEDNN_OPTS, classifier/machinery/numerics.py), and oneDNN picks its kernels
by shape: one device's 32-image products and a replica's 16-image ones are
then computed by different kernels, not only summed in another order, and
RMSprop's division by the gradients' running size lets that drift to
1.07e-3 in 30 steps (measured on a 2-core AVX-512 Xeon; capping the ISA
at AVX2 or SSE4.1 left it there, TF_ENABLE_ONEDNN_OPTS=0 gave 2.1e-5, and
2.6e-5 with AVX2 kernels as well). So the child runs with the rewrites off,
as TensorFlow runs on every other x86-64 CPU, and the test checks what it
is about: the strategy changes only the order of the sums. With dropout
the replicas draw other masks than one device does, so the runs only agree
statistically: validation accuracy within 0.05.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT

_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf

    # In the GPU image make_strategy would mirror over the GPU (one replica): this test is about the CPU's halves.
    tf.config.set_visible_devices([], "GPU")
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
    from conftest import pattern_images
    from classifier.config import make_config
    from classifier.machinery.distribute import make_strategy, make_trainer
    from classifier.machinery.recipes import build_model
    from classifier.machinery.recipes import make_optimizer
    from classifier.lecture.runtime import seed_everything

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=600).astype(np.int32)
    images = pattern_images(labels, (28, 28, 1), rng).astype(np.float32) / 255.0
    train, val = (images[:480], labels[:480]), (images[480:], labels[480:])

    def run(trainer_name, strategy_name, dropout):
        config = make_config(dataset="fashion_mnist", trainer=trainer_name, strategy=strategy_name,
                             epochs=2, batch_size=32, seed=3)
        seed_everything(config.seed)
        strategy = make_strategy(config)
        with strategy.scope():
            model = build_model("functional", (28, 28, 1), 10)
            optimizer = make_optimizer(config, steps_per_epoch=15)
        model.get_layer("dropout").rate = dropout
        trainer = make_trainer(config, model, optimizer, strategy, verbose=0)
        history = trainer.train(train, val)
        return {"replicas": strategy.num_replicas_in_sync, "history": history,
                "weights": [w.tolist() for w in model.get_weights()]}

    results = {}
    for trainer_name in ("tape", "fit"):
        for dropout in (0.0, 0.2):
            for strategy_name in ("default", "mirrored"):
                results[f"{trainer_name}-{strategy_name}-{dropout}"] = run(trainer_name, strategy_name, dropout)
    print("RESULT " + json.dumps(results))
""")


@pytest.fixture(scope="module")
def runs():
    """Both trainers, with and without dropout, on one device and mirrored over two logical CPUs."""
    # TensorFlow's kernels on any x86-64 CPU (module docstring, Tolerances).
    environment = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0"}
    completed = subprocess.run([sys.executable, "-c", _CHILD, str(ROOT)], capture_output=True, text=True,
                               timeout=600, cwd=ROOT, env=environment)
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(line for line in completed.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def _max_weight_difference(first, second):
    import numpy as np

    return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("trainer", ["tape", "fit"])
def test_mirrored_uses_both_logical_devices_and_trains(runs, trainer):
    mirrored = runs[f"{trainer}-mirrored-0.2"]
    assert mirrored["replicas"] == 2
    assert runs[f"{trainer}-default-0.2"]["replicas"] == 1
    history = mirrored["history"]
    assert history["loss"][-1] < history["loss"][0]
    assert history["val_accuracy"][-1] > 0.5, history  # chance is 0.1


@pytest.mark.parametrize("trainer", ["tape", "fit"])
def test_mirrored_matches_one_device_without_dropout(runs, trainer):
    single, mirrored = runs[f"{trainer}-default-0.0"], runs[f"{trainer}-mirrored-0.0"]
    assert _max_weight_difference(single["weights"], mirrored["weights"]) < 1e-4
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert mirrored["history"][key] == pytest.approx(single["history"][key], abs=1e-4), key


@pytest.mark.parametrize("trainer", ["tape", "fit"])
def test_mirrored_matches_one_device_statistically_with_dropout(runs, trainer):
    single, mirrored = runs[f"{trainer}-default-0.2"], runs[f"{trainer}-mirrored-0.2"]
    assert abs(mirrored["history"]["val_accuracy"][-1] - single["history"]["val_accuracy"][-1]) <= 0.05
