"""The fast recipe: its settings never override a flag, its network and schedule, plain-Keras loading."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from classifier import registry
from classifier.config import make_config, resolve_recipe
from classifier.machinery.recipes import build_model
from classifier.machinery.recipes import inference_model, make_optimizer, use_mixed_precision
from conftest import run_invoke, train_fashion


def test_fast_recipe_fills_in_only_what_the_person_left_out():
    fast = registry.HYP["fast"]["config"]
    resolved, chosen = resolve_recipe(make_config(recipe="fast"), given=frozenset({"recipe"}))
    assert {key: getattr(resolved, key) for key in fast} == fast
    assert chosen == fast
    # --batch-size 32 equals the lecture's default, and the person typed it: it stays.
    kept, chosen = resolve_recipe(make_config(recipe="fast", epochs=3, batch_size=32),
                                  given=frozenset({"recipe", "epochs", "batch_size"}))
    assert (kept.epochs, kept.batch_size, kept.model) == (3, 32, "fast_cnn")
    assert "batch_size" not in chosen and "epochs" not in chosen
    # A config read back from a run folder (given=None) is taken as it is.
    stored = make_config(recipe="fast", batch_size=32)
    assert resolve_recipe(stored)[0] == stored
    lecture = make_config(epochs=3)
    assert resolve_recipe(lecture, given=frozenset({"epochs"})) == (lecture, {})


def test_optimizers_of_the_two_recipes():
    from tensorflow import keras

    assert isinstance(make_optimizer(make_config(), steps_per_epoch=10), keras.optimizers.RMSprop)
    config = make_config(recipe="fast", learning_rate=0.01, epochs=5)
    fast = make_optimizer(config, steps_per_epoch=10)
    assert isinstance(fast, keras.optimizers.Adam)
    schedule = fast.learning_rate if callable(fast.learning_rate) else fast._learning_rate
    rates = [float(schedule(step)) for step in (0, 5, 10, 30, 50)]
    # Linear warm-up over the first epoch to the peak, then cosine decay to 0 at the end.
    assert rates == pytest.approx([0.0, 0.005, 0.01, 0.005, 0.0], abs=1e-6)


def test_fast_network_mirrors_in_training_only_and_averages_at_test_time():
    model = build_model("fast_cnn", (28, 28, 1), 10)
    images = np.random.default_rng(0).random((4, 28, 28, 1)).astype(np.float32)
    wrapper = inference_model(model, make_config(recipe="fast"))
    expected = (np.asarray(model(images, training=False)) + np.asarray(model(images[:, :, ::-1], training=False))) / 2
    np.testing.assert_allclose(np.asarray(wrapper(images, training=False)), expected, rtol=1e-5, atol=1e-6)
    # `training` left out, as `model(images)` and an exported SavedModel call it: still no random mirroring.
    np.testing.assert_allclose(np.asarray(wrapper(images)), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(wrapper(images)).sum(axis=1), 1.0, rtol=1e-5)
    assert inference_model(model, make_config()) is model


def bfloat16_cpu() -> bool:
    """Whether this machine's CPU computes bfloat16 in hardware (AMX or AVX-512 BF16), read from /proc/cpuinfo."""
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        return bool(set(cpuinfo.read().split()) & {"amx_bf16", "avx512_bf16"})


def gpu_here() -> bool:
    """Whether TensorFlow sees a GPU in this environment (the GPU image on the GPU runner)."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def test_only_the_fast_recipe_computes_in_bfloat16_and_never_under_portable_numerics():
    # Expected from this machine: a GPU, or a CPU with bfloat16 in hardware (tests/test_gpu_decisions.py
    # describes a GPU to the same functions where none is).
    fastest = "mixed_bfloat16" if gpu_here() or bfloat16_cpu() else "float32"
    assert use_mixed_precision(make_config(recipe="fast")) == (fastest == "mixed_bfloat16")
    assert not use_mixed_precision(make_config(recipe="fast", numerics="portable"))
    assert not use_mixed_precision(make_config())
    # oneDNN capped below bfloat16 (as `--numerics portable` caps it), or off: float32, not a failing bf16 convolution.
    from classifier.machinery import numerics

    assert not numerics.native_bfloat16({"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert not numerics.native_bfloat16({"TF_ENABLE_ONEDNN_OPTS": "0"})
    assert numerics.native_bfloat16({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}) == bfloat16_cpu()
    # Keras's policy is global: it holds only while the recipe's model is built, which keeps its own.
    from tensorflow import keras

    from classifier.machinery.distribute import build_model_and_optimizer

    model, _, policy = build_model_and_optimizer(make_config(recipe="fast", model="fast_cnn"), (28, 28, 1), 10, 100)
    assert policy == fastest
    assert model.get_layer("conv2").dtype_policy.name == policy
    assert keras.mixed_precision.global_policy().name == "float32"
    portable, _, policy = build_model_and_optimizer(make_config(recipe="fast", model="fast_cnn", numerics="portable"),
                                                    (28, 28, 1), 10, 100)
    assert policy == "float32" and portable.get_layer("conv2").dtype_policy.name == "float32"
    lecture, _, policy = build_model_and_optimizer(make_config(), (28, 28, 1), 10, 100)
    assert policy == "float32" and lecture.layers[0].dtype_policy.name == "float32"


@pytest.mark.slow
def test_fast_recipe_model_keras_loads_with_plain_keras_in_a_fresh_python(fashion_lab):
    """`invoke train --recipe fast` (fit compiles with the smoothed loss), then keras.models.load_model alone."""
    run, _ = train_fashion(fashion_lab, "--recipe", "fast", "--limit", "600", "--epochs", "1")
    metrics = json.loads((run / "metrics.json").read_text())
    # Mixed bfloat16 on a GPU or where the CPU computes it in hardware (AMX or AVX-512 BF16), float32
    # elsewhere and under portable numerics (the lab container's CLASSIFIER_NUMERICS): read from the run's record.
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    gpu = any(":GPU:" in device for device in manifest["environment"]["devices"])
    bfloat16 = manifest["config"]["numerics"] != "portable" and (gpu or bfloat16_cpu())
    assert manifest["precision"] == ("mixed_bfloat16" if bfloat16 else "float32")
    # No project import: only keras, NumPy and the data files, as a student elsewhere would load it.
    script = textwrap.dedent(f"""
        import gzip, numpy as np, keras

        def idx(name):
            raw = gzip.open({str(fashion_lab / "data" / "fashion_mnist")!r} + "/" + name).read()
            dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(raw[3])]
            return np.frombuffer(raw, np.uint8, offset=4 + 4 * raw[3]).reshape(dims)

        images = idx("t10k-images-idx3-ubyte.gz")[..., None].astype("float32") / 255.0
        labels = idx("t10k-labels-idx1-ubyte.gz")
        model = keras.models.load_model({str(run / "model.keras")!r})
        predicted = model.predict(images, batch_size=256, verbose=0).argmax(axis=1)
        print("accuracy", float(np.mean(predicted == labels)))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=run, timeout=300,
                            env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "classifier" not in result.stderr and "Warning" not in result.stderr, result.stderr
    accuracy = float(result.stdout.split("accuracy ")[-1])
    # The same weights on the same images: at most an image or two may flip where two classes nearly tie.
    assert accuracy == pytest.approx(metrics["accuracy"], abs=2 / metrics["num_images"])
    assert accuracy > 0.25  # chance is 0.1 (one warm-up epoch on 600 images)

    export = run_invoke("export", str(run), "--format", "savedmodel", "--data-dir", str(fashion_lab / "data"))
    assert export.returncode == 0, export.stderr[-2000:]
    rows = {row["format"]: row for row in json.loads((run / "export.json").read_text())["rows"]}
    assert rows["savedmodel"]["within_tolerance"] is True, rows


def test_fast_recipe_loss_smooths_the_labels_and_the_lecture_loss_does_not():
    from tensorflow import keras

    from classifier.machinery.recipes import make_loss
    from classifier.registry import HYP

    LABEL_SMOOTHING = HYP["fast"]["label_smoothing"]

    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype="float32")
    labels = np.array([0, 2])
    lecture = make_loss(make_config(recipe="lecture"))
    assert isinstance(lecture, keras.losses.SparseCategoricalCrossentropy)
    smoothed = make_loss(make_config(recipe="fast"))
    # By hand: the target row is (1 - s) * one_hot + s / 3, and the loss is its cross-entropy with the prediction.
    targets = (1 - LABEL_SMOOTHING) * np.eye(3)[labels] + LABEL_SMOOTHING / 3
    expected = -np.mean(np.sum(targets * np.log(probabilities), axis=1))
    assert float(smoothed(labels, probabilities)) == pytest.approx(expected, rel=1e-5)
    assert float(lecture(labels, probabilities)) == pytest.approx(-np.mean(np.log([0.7, 0.8])), rel=1e-5)
    per_image = make_loss(make_config(recipe="fast"), reduction=None)(labels, probabilities)
    assert per_image.shape == (2,) and float(np.mean(per_image)) == pytest.approx(expected, rel=1e-5)


def test_portable_rmsprop_divides_exactly_where_keras_rmsprop_runs_the_cpus_rsqrt():
    """Under --numerics portable the lecture's optimizer is PortableRMSprop, whose step is Keras' formula divided exactly.

    Eagerly Keras' RMSprop divides by the square root; inside tf.function (as in
    fit) Grappler turns that into rsqrt, the CPU's estimate. PortableRMSprop gives
    the eager values in a graph too (docs/reproducibility.md).
    """
    import tensorflow as tf
    from tensorflow import keras

    from classifier.machinery.recipes import PortableRMSprop

    assert type(make_optimizer(make_config(numerics="portable"), 10)) is PortableRMSprop
    assert type(make_optimizer(make_config(numerics="fastest"), 10)) is keras.optimizers.RMSprop
    rng = np.random.default_rng(0)
    start = rng.normal(0, 0.05, 4096).astype(np.float32)
    gradients = [rng.normal(0, 10.0 ** rng.uniform(-6, 0), 4096).astype(np.float32) for _ in range(3)]

    def trained(optimizer, graph: bool) -> np.ndarray:
        weights = tf.Variable(start)
        optimizer.build([weights])
        step = lambda gradient: optimizer.apply_gradients([(gradient, weights)])  # noqa: E731
        for gradient in gradients:
            (tf.function(step) if graph else step)(tf.constant(gradient))
        return weights.numpy()

    exact = trained(keras.optimizers.RMSprop(learning_rate=0.001), graph=False)
    assert np.array_equal(trained(PortableRMSprop(learning_rate=0.001), graph=True), exact)
    assert np.array_equal(trained(PortableRMSprop(learning_rate=0.001), graph=False), exact)
    # The control: Keras' own in a graph is not the exact step (the rsqrt estimate; QEMU would make it equal).
    assert not np.array_equal(trained(keras.optimizers.RMSprop(learning_rate=0.001), graph=True), exact)
