"""Both trainers learn, repeat exactly, and resume exactly from a checkpoint."""

import numpy as np
import pytest
from tensorflow import keras

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


def train(trainer_name, folder, epochs=2, seed=7, recipe="lecture", stop_after=None, resume=False, **overrides):
    """Build, (restore,) train; returns (model, the run's history so far) as train_command keeps it."""
    config = make_config(dataset="fashion_mnist", trainer=trainer_name, epochs=epochs, seed=seed, recipe=recipe,
                         **overrides)
    if resume:
        seed_everything(999)  # A fresh process would build other initial weights: the checkpoint must replace them.
    seed_everything(seed)
    model = build_model(config.model, (28, 28, 1), 10)
    optimizer = make_optimizer(config, steps_per_epoch=15)
    seed_everything(seed)
    checkpoints = Checkpoints(folder, model, optimizer)
    callbacks = [checkpoints] + ([_StopAfter(stop_after)] if stop_after else [])
    initial_epoch = checkpoints.restore() if resume else 0
    trainer = make_trainer(config, model, optimizer, callbacks=callbacks, verbose=0)
    try:
        trainer.train(*splits(), initial_epoch=initial_epoch)
    except _Stop:
        pass
    return model, checkpoints.history


class _Stop(Exception):
    pass


class _StopAfter(keras.callbacks.Callback):
    """Stops training after `epochs` epochs (their checkpoint saved), as a kill between two epochs would."""

    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            raise _Stop


def test_the_registry_names_the_trainers():
    from classifier import registry
    from classifier.lecture.train import TRAINERS

    assert tuple(TRAINERS) == registry.TRAINERS
    assert TRAINERS == {"fit": FitTrainer, "tape": TapeTrainer}


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


def test_different_seed_gives_different_weights(tmp_path):
    first, _ = train("tape", tmp_path / "a", seed=1)
    second, _ = train("tape", tmp_path / "b", seed=2)
    assert weights_hash(first) != weights_hash(second)


@pytest.mark.parametrize("trainer_name", ["fit", "tape"])
@pytest.mark.parametrize("recipe", ["lecture", "fast"])
def test_resume_from_checkpoint_matches_an_uninterrupted_run(trainer_name, recipe, tmp_path):
    fast = {"batch_size": 32, "model": "fast_cnn"} if recipe == "fast" else {}
    uninterrupted, full_history = train(trainer_name, tmp_path / "full", epochs=3, recipe=recipe, **fast)
    _, partial = train(trainer_name, tmp_path / "stopped", epochs=3, recipe=recipe, stop_after=1, **fast)
    assert len(partial["loss"]) == 1
    resumed, history = train(trainer_name, tmp_path / "stopped", epochs=3, recipe=recipe, resume=True, **fast)
    assert weights_hash(resumed) == weights_hash(uninterrupted)
    assert history == full_history
