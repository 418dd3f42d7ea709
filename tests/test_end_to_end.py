"""End to end on real images: Debian's Fashion-MNIST through `invoke data --from` and `invoke train`."""

import json

import matplotlib.image
import pytest

from conftest import run_invoke, train_fashion

pytestmark = pytest.mark.slow


@pytest.fixture
def lab(fashion_lab):
    return fashion_lab


def _train(lab, *args):
    return train_fashion(lab, *args)


@pytest.mark.parametrize("trainer", ["fit", "tape"])
def test_brief_training_on_real_fashion_mnist(lab, trainer):
    run_dir, result = _train(lab, "--trainer", trainer, "--limit", "6000", "--epochs", "1")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_images"] == 10000
    assert metrics["accuracy"] > 0.65, metrics["accuracy"]  # chance is 0.10
    assert metrics["probabilities_sum_to_one"]
    for path in run_dir.iterdir():
        if path.suffix == ".json":
            assert json.loads(path.read_text())
        elif path.suffix == ".png":
            assert path.stat().st_size > 1000 and matplotlib.image.imread(path).size > 0
    assert {"model.png", "samples.png", "learning_curves.png", "confusion_matrix.png", "model.keras"} <= {
        p.name for p in run_dir.iterdir()
    }
    assert "test accuracy" in result.stdout


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
