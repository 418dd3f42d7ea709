"""TensorBoard for every run: what both trainers write, read back from the event files, and no change to the weights."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest


def _events(folder: Path) -> dict:
    """Everything in one folder's event files: {"scalars": {tag: {step: value}}, "images": {tag}, "graph", "plugins"}."""
    import tensorflow as tf

    found = {"scalars": defaultdict(dict), "images": set(), "graph": False, "plugins": defaultdict(list)}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            found["graph"] |= bool(event.graph_def)
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                found["plugins"][plugin].append(value)
                if plugin == "scalars":
                    found["scalars"][value.tag][event.step] = float(tf.make_ndarray(value.tensor))
                elif plugin == "images":
                    found["images"].add(value.tag)
    return found


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """For each trainer, the same tiny run with TensorBoard on and off: {(trainer, on): run folder}."""
    from classifier.commands.train import train_command
    from classifier.config import make_config
    from classifier.machinery.download import import_from
    from conftest import registered, tiny_spec

    root = tmp_path_factory.mktemp("tensorboard")
    with registered(tiny_spec(root / "source", num_train=300, num_test=100)) as spec:
        import_from(spec, root / "data", root / "source")
        runs = {}
        for trainer in ("fit", "tape"):
            for on in (True, False):
                config = make_config(dataset="tiny", trainer=trainer, epochs=2, tensorboard=on,
                                     data_dir=str(root / "data"), runs_dir=str(root / f"runs-{trainer}-{on}"))
                runs[trainer, on] = train_command(config, verbose=0)
        yield runs


@pytest.mark.parametrize("trainer", ["fit", "tape"])
def test_every_run_writes_curves_learning_rate_graph_images_and_hparams(tiny_runs, trainer):
    run = tiny_runs[trainer, True]
    history = json.loads((run / "history.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    train, validation, top = (_events(run / "tensorboard" / name) for name in ("train", "validation", "."))

    # Per-epoch curves under Keras' tags, step = epoch, equal to history.json.
    for key in ("loss", "accuracy"):
        assert train["scalars"][f"epoch_{key}"] == pytest.approx(dict(enumerate(history[key])), rel=1e-6)
        assert validation["scalars"][f"epoch_{key}"] == pytest.approx(dict(enumerate(history[f"val_{key}"])), rel=1e-6)
    assert train["scalars"]["epoch_learning_rate"] == pytest.approx({0: 0.001, 1: 0.001})
    assert train["graph"], "the model graph is missing"
    # After evaluation: the test metrics, the pictures and the hyperparameters.
    assert top["scalars"]["test/accuracy"] == pytest.approx({2: metrics["accuracy"]})
    assert top["scalars"]["test/loss"] == pytest.approx({2: metrics["loss"]})
    assert {"samples", "confusion_matrix", "learning_curves"} <= top["images"]
    hparams = b"".join(value.metadata.plugin_data.content for value in top["plugins"]["hparams"])
    assert trainer.encode() in hparams and b"batch_size" in hparams and run.name.encode() in hparams


@pytest.mark.parametrize("trainer", ["fit", "tape"])
def test_tensorboard_leaves_the_weights_bit_identical(tiny_runs, trainer):
    with_board, without = (json.loads((tiny_runs[trainer, on] / "manifest.json").read_text()) for on in (True, False))
    assert with_board["weights_sha256"] == without["weights_sha256"]
    assert not (tiny_runs[trainer, False] / "tensorboard").exists()
    timings = json.loads((tiny_runs[trainer, True] / "timings.json").read_text())
    assert 0 < timings["tensorboard_seconds"] < timings["train_seconds"]
    assert json.loads((tiny_runs[trainer, False] / "timings.json").read_text())["tensorboard_seconds"] is None
    assert json.loads((tiny_runs[trainer, True] / "metrics.json").read_text())["accuracy"] == \
        json.loads((tiny_runs[trainer, False] / "metrics.json").read_text())["accuracy"]


def test_tensorboard_reads_the_runs_folder(tiny_runs):
    """What `tensorboard --logdir runs` lists: each run's train and validation folders with their scalar tags."""
    from tensorboard.backend.event_processing import plugin_event_multiplexer

    run = tiny_runs["tape", True]
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(run.parent))
    multiplexer.Reload()
    tags = {name: set(content.get("tensors", [])) for name, content in multiplexer.Runs().items()}
    assert {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"} <= tags[f"{run.name}/tensorboard/train"]
    assert {"epoch_loss", "epoch_accuracy"} <= tags[f"{run.name}/tensorboard/validation"]
