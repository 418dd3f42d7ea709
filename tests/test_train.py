"""Both trainers learn and repeat exactly; `train_command` resumes exactly from a checkpoint."""

import json
import sys

import numpy as np
import pytest

from classifier.machinery.checkpoints import HISTORY_KEYS, Checkpoints
from classifier.config import make_config
from classifier.machinery.distribute import make_trainer
from classifier.machinery.recipes import build_model
from classifier.machinery.recipes import make_optimizer
from classifier.machinery.runs import weights_hash
from classifier.lecture.runtime import seed_everything
from classifier.lecture.train import FitTrainer, TapeTrainer

from conftest import pattern_images


def splits(num_train=480, num_val=120, seed=0):
    """Learnable 28x28 pattern images: ((x_train, y_train), (x_val, y_val))."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=num_train + num_val).astype(np.int32)
    images = pattern_images(labels, (28, 28, 1), rng).astype(np.float32) / 255.0
    return (images[:num_train], labels[:num_train]), (images[num_train:], labels[num_train:])


def train(trainer_name, folder, epochs=2, seed=7, recipe="lecture", **overrides):
    """Build and train one trainer on pattern images; returns (model, its checkpointed history)."""
    config = make_config(dataset="fashion_mnist", trainer=trainer_name, epochs=epochs, seed=seed, recipe=recipe,
                         **overrides)
    seed_everything(seed)
    model = build_model(config.model, (28, 28, 1), 10)
    optimizer = make_optimizer(config, steps_per_epoch=15)
    seed_everything(seed)
    checkpoints = Checkpoints(folder, model, optimizer)
    trainer = make_trainer(config, model, optimizer, callbacks=[checkpoints], verbose=0)
    trainer.train(*splits())
    return model, checkpoints.history


@pytest.mark.parametrize("trainer_name", ["fit", "tape"])
def test_trainer_learns_and_reports_every_epoch(trainer_name, tmp_path):
    _, history = train(trainer_name, tmp_path, epochs=3)
    assert set(history) == set(HISTORY_KEYS)
    assert all(len(values) == 3 for values in history.values())
    assert history["loss"][-1] < history["loss"][0]
    assert history["val_accuracy"][-1] > 0.5, history  # chance is 0.1


@pytest.mark.parametrize("trainer_name", ["fit", "tape"])
def test_same_seed_gives_bit_identical_weights(trainer_name, tmp_path):
    first, history_a = train(trainer_name, tmp_path / "a")
    second, history_b = train(trainer_name, tmp_path / "b")
    assert weights_hash(first) == weights_hash(second)
    assert history_a == history_b


@pytest.mark.parametrize("trainer_name", ["fit", "tape"])
def test_many_steps_per_call_give_the_lectures_weights_bit_for_bit(trainer_name, tmp_path, monkeypatch):
    """make_trainer's trainers run several of the lecture's steps per call (machinery/steps.py); the weights
    and training curves are those of the lecture's trainer run one step per call (the validation curve to
    float32's digits), also when an epoch's 15 steps are not a multiple of the 4 per call."""
    import classifier.machinery.distribute as distribute
    import classifier.machinery.steps as steps

    monkeypatch.setattr(steps, "STEPS_PER_CALL", 4)
    monkeypatch.setattr(distribute, "STEPS_PER_CALL", 4)
    calls = []
    lab_steps = steps.StepsPerCallTapeTrainer._train_steps.python_function
    monkeypatch.setattr(steps.StepsPerCallTapeTrainer, "_train_steps",
                        tf_function_counting(lab_steps, calls))
    lab, lab_history = train(trainer_name, tmp_path / "lab")
    lecture_trainer = {"fit": FitTrainer, "tape": TapeTrainer}[trainer_name]
    monkeypatch.setattr(sys.modules[__name__], "make_trainer",
                        lambda config, model, optimizer, callbacks, verbose: lecture_trainer(
                            model, optimizer, config, callbacks=callbacks, verbose=verbose))
    lecture, lecture_history = train(trainer_name, tmp_path / "lecture")
    assert weights_hash(lab) == weights_hash(lecture)
    # The training curves bit for bit. The validation pass is traced into another graph when several steps go
    # in one call, and on an AMD EPYC (AVX2) its loss came out 3e-9 apart (0.004771324 vs 0.004771328) with
    # the same weights: the promise is the weights (docs/package.md), the validation curve to float32's digits.
    assert {key: lab_history[key] for key in ("loss", "accuracy")} == {
        key: lecture_history[key] for key in ("loss", "accuracy")}
    for key in ("val_loss", "val_accuracy"):
        assert lab_history[key] == pytest.approx(lecture_history[key], rel=1e-6), key
    if trainer_name == "tape":
        assert len(calls) == 2 * 4  # 2 epochs of 15 steps: calls of 4, 4, 4 and 3 steps


def tf_function_counting(python_function, calls):
    """python_function under tf.function, appending to `calls` each time it is called from Python."""
    import tensorflow as tf

    compiled = tf.function(python_function)

    def counted(self, *args):
        calls.append(1)
        return compiled(self, *args)

    return counted


def test_different_seed_gives_different_weights(tmp_path):
    first, _ = train("tape", tmp_path / "a", seed=1)
    second, _ = train("tape", tmp_path / "b", seed=2)
    assert weights_hash(first) != weights_hash(second)


@pytest.mark.parametrize("trainer_name", ["fit", "tape"])
@pytest.mark.parametrize("recipe", ["lecture", "fast"])
def test_resume_from_checkpoint_matches_an_uninterrupted_run(tiny_dataset, tmp_path, monkeypatch, capsys,
                                                            trainer_name, recipe):
    """train_command stopped by Ctrl-C after epoch 1, then train_command(resume=...), as `invoke train --resume`."""
    from classifier.config import Interrupted
    from classifier.commands.train import train_command
    from classifier.machinery.download import import_from

    dataset, source = tiny_dataset
    import_from(dataset, tmp_path / "data", source)
    fast = {"batch_size": 32, "model": "fast_cnn"} if recipe == "fast" else {}
    config = make_config(dataset="tiny", trainer=trainer_name, epochs=3, seed=7, recipe=recipe, limit=480,
                         data_dir=str(tmp_path / "data"), runs_dir=str(tmp_path / "runs"), tensorboard=False, **fast)
    uninterrupted = train_command(config, verbose=0)

    saved = Checkpoints.on_epoch_end

    def ctrl_c_after_epoch_one(self, epoch, logs=None):
        saved(self, epoch, logs)
        if epoch == 0:
            raise KeyboardInterrupt  # what Ctrl-C raises, once epoch 1 is checkpointed

    monkeypatch.setattr(Checkpoints, "on_epoch_end", ctrl_c_after_epoch_one)
    with pytest.raises(Interrupted, match=r"stopped after 1/3 epoch\(s\); continue with: invoke train --resume "):
        train_command(config, verbose=0)
    monkeypatch.setattr(Checkpoints, "on_epoch_end", saved)
    (stopped,) = [path for path in (tmp_path / "runs").iterdir() if path != uninterrupted]
    assert json.loads((stopped / "manifest.json").read_text())["status"] == "interrupted"
    first_epoch = json.loads((stopped / "checkpoint" / "state.json").read_text())["epoch_seconds"]
    seed_everything(999)  # A fresh process would be in another state: the checkpoint must replace all of it.

    capsys.readouterr()
    resumed = train_command(make_config(), resume=str(stopped), verbose=0)
    assert resumed == stopped
    # Epochs 2 and 3 ran; epoch 1 came from the checkpoint (a rerun from the seed would give the same weights).
    assert f"Resuming {stopped.name} after epoch 1/3" in capsys.readouterr().out
    assert json.loads((resumed / "history.json").read_text())["epoch_seconds"][:1] == first_epoch
    manifests = [json.loads((run / "manifest.json").read_text()) for run in (uninterrupted, resumed)]
    assert manifests[1]["status"] == "complete"
    assert manifests[1]["weights_sha256"] == manifests[0]["weights_sha256"]
    histories = [json.loads((run / "history.json").read_text()) for run in (uninterrupted, resumed)]
    assert {key: histories[1][key] for key in HISTORY_KEYS} == {key: histories[0][key] for key in HISTORY_KEYS}
