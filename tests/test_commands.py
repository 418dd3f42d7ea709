"""`invoke train`'s command, in-process, on a dataset the test made."""

import json

import matplotlib.image
import pytest

from classifier.config import make_config
from classifier.machinery.download import import_from
from classifier.commands.train import train_command


@pytest.mark.parametrize("trainer", ["fit", "tape"])
def test_training_writes_a_complete_run_folder(tiny_dataset, tmp_path, trainer):
    dataset, source = tiny_dataset
    import_from(dataset, tmp_path / "data", source)
    config = make_config(dataset="tiny", trainer=trainer, epochs=2, data_dir=str(tmp_path / "data"),
                         runs_dir=str(tmp_path / "runs"))
    run_dir = train_command(config, verbose=0)
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.json", "history.json", "metrics.json", "timings.json", "manifest.json", "model.keras",
            "samples.png", "learning_curves.png", "confusion_matrix.png"} <= names
    assert not [name for name in names if name.startswith(".")], "no temporary file may be left"
    for name in names:
        if name.endswith(".png"):
            assert matplotlib.image.imread(run_dir / name).size > 0
    config_json = json.loads((run_dir / "config.json").read_text())
    assert config_json["trainer"] == trainer and config_json["epochs"] == 2
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history["loss"]) == 2 and len(history["epoch_seconds"]) == 2
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.5 and metrics["probabilities_sum_to_one"]
    assert metrics["accuracy"] == pytest.approx(metrics["argmax_accuracy"], abs=1e-6)
    assert len(metrics["confusion_matrix"]) == 10 and metrics["num_images"] == 200
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert set(manifest["data"]["sha256"]) == {f.name for f in dataset.files}
    assert manifest["environment"]["tensorflow"].startswith("2.")
    assert "numpy" in manifest["environment"]["packages"]
    assert len(manifest["weights_sha256"]) == 64
    timings = json.loads((run_dir / "timings.json").read_text())
    assert timings["train_images_per_second"] > 0


def test_each_data_file_is_hashed_once_per_run(tiny_dataset, tmp_path, monkeypatch):
    from classifier.machinery import download

    dataset, source = tiny_dataset
    import_from(dataset, tmp_path / "data", source)
    hashed = []
    original = download.sha256_of
    monkeypatch.setattr(download, "sha256_of", lambda path, *how: hashed.append(path.name) or original(path, *how))
    config = make_config(dataset="tiny", epochs=1, data_dir=str(tmp_path / "data"), runs_dir=str(tmp_path / "runs"))
    train_command(config, verbose=0)
    assert sorted(hashed) == sorted(f.name for f in dataset.files)


def test_a_flag_the_person_gave_is_never_overridden_by_the_recipe(tiny_dataset, tmp_path, capsys):
    dataset, source = tiny_dataset
    import_from(dataset, tmp_path / "data", source)
    config = make_config(dataset="tiny", recipe="fast", epochs=1, batch_size=32, limit=300,
                         data_dir=str(tmp_path / "data"), runs_dir=str(tmp_path / "runs"))
    given = frozenset({"dataset", "recipe", "epochs", "batch_size", "limit", "data_dir", "runs_dir"})
    run_dir = train_command(config, given=given, verbose=0)
    stored = json.loads((run_dir / "config.json").read_text())
    assert (stored["batch_size"], stored["epochs"], stored["model"], stored["val_split"]) == (32, 1, "fast_cnn", 0.1)
    assert "recipe fast chose: model=fast_cnn, learning_rate=0.003, val_split=0.1" in capsys.readouterr().out


def test_trainings_started_at_the_same_moment_get_separate_folders(tiny_dataset, tmp_path):
    import threading

    from classifier.machinery.runs import create_run_dir

    config = make_config(dataset="tiny")
    barrier = threading.Barrier(8)
    folders = []

    def start():
        barrier.wait()  # all eight claim a folder in the same instant
        folders.append(create_run_dir(tmp_path, config))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(folders)) == 8 and all(folder.is_dir() for folder in folders)
