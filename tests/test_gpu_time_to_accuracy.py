"""benchmarks/gpu_time_to_accuracy.py: its network is the lab's, its times are read off the curve, it runs here.

The script's figures come from the lent GPU machine (Keras on JAX, no
TensorFlow there). These tests keep them about the lab's recipe: the Keras 3
network it builds is `classifier.machinery.recipes.fast_cnn` layer for layer, and the
whole script runs on this CPU (Keras on TensorFlow, torch's CPU build) on
real Fashion-MNIST.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_time_to_accuracy.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_time_to_accuracy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_network_is_the_lab_fast_cnn(bench):
    from tensorflow import keras

    from classifier.machinery.recipes import fast_cnn

    keras.utils.set_random_seed(1)
    lab = fast_cnn((28, 28, 1), 10)
    replica = bench.fast_cnn(keras, (28, 28, 1), 10)
    # Layer by layer, past the input layer (whose generated name counts the inputs made so far).
    assert [(type(layer).__name__, layer.get_config()) for layer in replica.layers[1:]] == \
        [(type(layer).__name__, layer.get_config()) for layer in lab.layers[1:]]
    assert replica.input_shape == lab.input_shape and replica.name == lab.name
    assert replica.count_params() == lab.count_params() == 824_650


def test_wide_network_doubles_the_stages(bench):
    from tensorflow import keras

    wide = bench.fast_cnn(keras, (28, 28, 1), 10, widths=(64, 128), dense=512, double=True)
    convolutions = [layer for layer in wide.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [layer.filters for layer in convolutions] == [64, 64, 128, 128]
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in wide.layers) == 4
    assert wide.get_layer("dense1").units == 512


def test_summary_reads_each_target_off_the_curve(bench):
    runs = [
        {"subject": "a", "train_images": 1000, "train_seconds": [10.0, 12.0, 14.0], "test_accuracy": [0.90, 0.92, 0.941]},
        {"subject": "a", "train_images": 1000, "train_seconds": [11.0, 13.0, 15.0], "test_accuracy": [0.915, 0.93, 0.935]},
    ]
    entry = bench.summarise(runs)["a"]
    assert entry["0.91"] == {"reached": 2, "seconds_mean": 11.5, "seconds_stdev": pytest.approx(0.7071, abs=1e-4),
                             "epochs_mean": 1.5}
    assert entry["0.93"]["reached"] == 2 and entry["0.93"]["seconds_mean"] == 13.5
    assert entry["0.94"] == {"reached": 1, "seconds_mean": 14.0, "seconds_stdev": 0.0, "epochs_mean": 3}
    assert entry["best_accuracy_mean"] == pytest.approx((0.941 + 0.935) / 2)
    assert entry["epoch_seconds"] == 2.0 and entry["images_per_second"] == 500.0
    assert entry["first_epoch_seconds"] == 10.5


def _script(*args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=environment, cwd=ROOT, timeout=600, check=False)


def test_unknown_subject_is_one_line(tmp_path):
    result = _script("--data-dir", str(tmp_path), "--subjects", "keras-jax fast,tpu", "--output", str(tmp_path / "r"))
    assert result.returncode == 2
    assert result.stderr.strip() == ("unknown subject(s) 'tpu'; accepted: keras-jax fast, keras-jax wide, "
                                     "torch lecture")
    assert not (tmp_path / "r.json").exists()


@pytest.mark.slow
def test_runs_on_real_fashion_mnist_and_merges(fashion_lab, tmp_path):
    pytest.importorskip("torch")
    result = _script("--data-dir", str(fashion_lab / "data"), "--subjects", "keras-jax fast,torch lecture",
                     "--seeds", "1", "--epochs", "2", "--limit", "600", "--output", str(tmp_path / "cpu"))
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "cpu.json").read_text())
    assert [run["subject"] for run in results["runs"]] == ["keras-jax fast", "torch lecture"]
    for run in results["runs"]:
        assert len(run["train_seconds"]) == len(run["test_accuracy"]) == 2
        assert run["train_seconds"][1] > run["train_seconds"][0] > 0
        # 540 or 480 training images for 2 epochs: well above chance (0.10), well below the full run.
        assert 0.2 < max(run["test_accuracy"]) < 0.9
    assert results["runs"][0]["policy"] == "float32"  # bfloat16 on a GPU only, as the lab
    assert results["runs"][1]["parameters"] == 333_526
    assert "| keras-jax fast | 1 |" in (tmp_path / "cpu.md").read_text()

    # A device call cut off by its time limit leaves part of the seeds; --merge summarises the parts.
    more = dict(results, runs=[dict(run, seed=43) for run in results["runs"][1:]])
    (tmp_path / "more.json").write_text(json.dumps(more))
    merged = _script("--data-dir", "-", "--merge", str(tmp_path / "cpu.json"), str(tmp_path / "more.json"),
                     "--output", str(tmp_path / "merged"))
    assert merged.returncode == 0, merged.stderr
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert [run["seed"] for run in merged["runs"]] == [42, 42, 43]
    assert merged["summary"]["torch lecture"]["seeds"] == 2 and merged["summary"]["keras-jax fast"]["seeds"] == 1
