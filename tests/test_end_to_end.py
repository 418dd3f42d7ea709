"""End to end on real images: Debian's Fashion-MNIST through `invoke data --from` and `invoke train`."""

import json

import matplotlib.image
import numpy as np
import pytest
from tensorflow import keras

from classifier.machinery.runs import weights_hash
from conftest import run_invoke, sha256_bytes, train_fashion


@pytest.fixture
def lab(fashion_lab):
    return fashion_lab


def _train(lab, *args):
    return train_fashion(lab, *args)


# The trainings are slow; the two refusals below train nothing (quick).
@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["fit", "tape"])
def test_brief_training_on_real_fashion_mnist(lab, trainer):
    run_dir, result = _train(lab, "--trainer", trainer, "--limit", "6000", "--epochs", "1")
    config, history, timings, metrics, manifest = (
        json.loads((run_dir / name).read_text())
        for name in ("config.json", "history.json", "timings.json", "metrics.json", "manifest.json"))
    assert metrics["num_images"] == 10000
    assert metrics["accuracy"] > 0.65, metrics["accuracy"]  # chance is 0.10
    assert metrics["probabilities_sum_to_one"]
    confusion = np.array(metrics["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == 10000
    assert np.trace(confusion) / 10000 == pytest.approx(metrics["argmax_accuracy"])
    assert {key: config[key] for key in ("dataset", "trainer", "limit", "epochs", "seed", "val_split")} == {
        "dataset": "fashion_mnist", "trainer": trainer, "limit": 6000, "epochs": 1, "seed": 42, "val_split": 0.2}
    assert {key: len(history[key]) for key in ("loss", "accuracy", "val_loss", "val_accuracy")} == dict.fromkeys(
        ("loss", "accuracy", "val_loss", "val_accuracy"), 1)
    assert 0 < history["loss"][0] < 2.31 and 0.5 < history["val_accuracy"][0] <= 1  # 2.30 = ln 10, chance's loss
    assert timings["train_seconds"] > 0 and timings["evaluate_seconds"] > 0 and len(timings["epoch_seconds"]) == 1
    # The manifest's evidence: the finished state, the settings, the exact data files and the saved weights.
    folder = lab / "data" / "fashion_mnist"
    assert manifest["status"] == "complete" and manifest["config"] == config
    assert manifest["data"] == {"dataset": "fashion_mnist", "train": 4800, "validation": 1200, "test": 10000,
                                "sha256": {path.name: sha256_bytes(path.read_bytes()) for path in folder.glob("*.gz")}}
    assert manifest["weights_sha256"] == weights_hash(keras.models.load_model(run_dir / "model.keras"))
    for path in run_dir.glob("*.png"):
        assert path.stat().st_size > 1000 and matplotlib.image.imread(path).size > 0
    assert {"model.png", "samples.png", "learning_curves.png", "confusion_matrix.png", "model.keras"} <= {
        p.name for p in run_dir.iterdir()
    }
    assert "test accuracy" in result.stdout


@pytest.mark.slow
def test_same_seed_twice_gives_identical_metrics(lab):
    first, _ = _train(lab, "--limit", "2000", "--epochs", "2", "--seed", "3")
    second, _ = _train(lab, "--limit", "2000", "--epochs", "2", "--seed", "3")
    assert first != second
    for name in ("metrics.json",):
        assert json.loads((first / name).read_text()) == json.loads((second / name).read_text())
    history = [json.loads((d / "history.json").read_text()) for d in (first, second)]
    assert [h["loss"] for h in history][0] == [h["loss"] for h in history][1]
    hashes = [json.loads((d / "manifest.json").read_text())["weights_sha256"] for d in (first, second)]
    assert hashes[0] == hashes[1]


def test_limit_larger_than_the_data(lab):
    before = sorted(p.name for p in (lab / "runs").iterdir()) if (lab / "runs").exists() else []
    result = run_invoke("train", "--dataset", "fashion_mnist", "--data-dir", str(lab / "data"),
                        "--runs-dir", str(lab / "runs"), "--limit", "70000")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: limit 70000 is larger than the 60000 training images" in result.stderr
    after = sorted(p.name for p in (lab / "runs").iterdir()) if (lab / "runs").exists() else []
    assert after == before, "a refused run must leave no run folder behind"


def test_runs_folder_that_cannot_be_written(lab, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run_invoke("train", "--dataset", "fashion_mnist", "--data-dir", str(lab / "data"),
                        "--runs-dir", str(blocker / "runs"), "--limit", "100", "--epochs", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: runs folder {blocker / 'runs'} cannot be created" in result.stderr
