"""Both trainers learn, repeat exactly, and resume exactly."""

import numpy as np
import pytest

from classifier.config import make_config
from classifier.data import Split
from classifier.models import build_model
from classifier.pipeline import load_checkpoint, save_checkpoint, weights_hash
from classifier.runtime import seed_everything
from classifier.train import HISTORY_KEYS, make_trainer

from conftest import pattern_images


def _splits(num_train=480, num_val=120, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=num_train + num_val).astype(np.int32)
    images = pattern_images(labels, (28, 28, 1), rng).astype(np.float32) / 255.0
    return Split(images[:num_train], labels[:num_train]), Split(images[num_train:], labels[num_train:])


def _train(trainer_name, epochs=2, seed=7, model="sequential_add", hook=None, start_epoch=0, trainer=None):
    config = make_config(dataset="fashion_mnist", trainer=trainer_name, epochs=epochs, seed=seed, model=model)
    train, val = _splits()
    if trainer is None:
        seed_everything(seed)
        trainer = make_trainer(trainer_name, build_model(model, (28, 28, 1), 10), config, verbose=0)
    history = trainer.train(train, val, start_epoch=start_epoch, on_epoch_end=hook)
    return trainer, history


@pytest.mark.parametrize("trainer_name", ["fit", "tape"])
def test_trainer_learns_and_reports_every_epoch(trainer_name):
    trainer, history = _train(trainer_name, epochs=3)
    assert set(history) == set(HISTORY_KEYS)
    assert all(len(values) == 3 for values in history.values())
    assert history["loss"][-1] < history["loss"][0]
    assert history["val_accuracy"][-1] > 0.5, history  # chance is 0.1
    assert len(trainer.epoch_seconds) == 3


@pytest.mark.parametrize("trainer_name", ["fit", "tape"])
def test_same_seed_gives_bit_identical_weights(trainer_name):
    first, history_a = _train(trainer_name)
    second, history_b = _train(trainer_name)
    assert weights_hash(first.model) == weights_hash(second.model)
    assert history_a == history_b


def test_different_seed_gives_different_weights():
    first, _ = _train("tape", seed=1)
    second, _ = _train("tape", seed=2)
    assert weights_hash(first.model) != weights_hash(second.model)


@pytest.mark.parametrize("trainer_name", ["fit", "tape"])
def test_resume_from_checkpoint_matches_an_uninterrupted_run(trainer_name, tmp_path):
    uninterrupted, _ = _train(trainer_name, epochs=3)

    # Train one epoch and checkpoint it, as a run killed during epoch 2 would have.
    class Stop(Exception):
        pass

    def save_then_stop(epoch, trainer):
        save_checkpoint(tmp_path, epoch, trainer)
        raise Stop

    with pytest.raises(Stop):
        _train(trainer_name, epochs=3, hook=save_then_stop)

    # A fresh process would build a fresh model with other initial weights.
    config = make_config(dataset="fashion_mnist", trainer=trainer_name, epochs=3, seed=7)
    seed_everything(999)
    fresh = make_trainer(trainer_name, build_model("sequential_add", (28, 28, 1), 10), config, verbose=0)
    done = load_checkpoint(tmp_path, fresh)
    assert done == 1
    resumed, history = _train(trainer_name, epochs=3, trainer=fresh, start_epoch=done)
    assert weights_hash(resumed.model) == weights_hash(uninterrupted.model)
    assert history == uninterrupted.history
