"""`recipe="fast"`: its config, network, schedule and augmentation, and that it keeps the lab's determinism."""

import numpy as np
import pytest

from classifier.config import make_config
from classifier.data import Split
from classifier.models import build_model
from classifier.pipeline import load_checkpoint, save_checkpoint, weights_hash
from classifier.runtime import seed_everything
from classifier.train import FAST_RECIPE, OneCycle, epoch_flips, make_optimizer, make_trainer, resolve_recipe

from conftest import pattern_images


def test_fast_recipe_fills_in_the_lecture_defaults_only():
    resolved = resolve_recipe(make_config(recipe="fast"))
    assert {key: getattr(resolved, key) for key in FAST_RECIPE} == FAST_RECIPE
    kept = resolve_recipe(make_config(recipe="fast", epochs=3, batch_size=64))
    assert (kept.epochs, kept.batch_size, kept.model) == (3, 64, "fast_cnn")
    lecture = make_config(epochs=3)
    assert resolve_recipe(lecture) == lecture


def test_optimizers_of_the_two_recipes():
    from tensorflow import keras

    assert isinstance(make_optimizer(make_config()), keras.optimizers.RMSprop)
    fast = make_optimizer(resolve_recipe(make_config(recipe="fast")))
    assert isinstance(fast, keras.optimizers.Adam)
    assert isinstance(fast._learning_rate, OneCycle)


def test_one_cycle_warms_up_peaks_and_decays_to_zero():
    schedule = OneCycle(peak=0.01, epochs=5, warmup_epochs=1.0, steps_per_epoch=10)
    rates = [float(schedule(step)) for step in (0, 5, 10, 30, 50, 60)]
    assert rates == pytest.approx([0.0, 0.005, 0.01, 0.005, 0.0, 0.0])
    assert OneCycle.from_config(schedule.get_config()).get_config() == schedule.get_config()


def test_flips_depend_on_seed_and_epoch_only():
    first = epoch_flips(1, 0, 1000)
    assert np.array_equal(first, epoch_flips(1, 0, 1000))
    assert not np.array_equal(first, epoch_flips(1, 1, 1000))
    assert 0.4 < first.mean() < 0.6


def test_fast_network_outputs_probabilities_in_float32_under_mixed_precision():
    model = build_model("fast_cnn", (28, 28, 1), 10, dtype_policy="mixed_bfloat16")
    assert model.get_layer("conv2").compute_dtype == "bfloat16"
    probs = model(np.zeros((2, 28, 28, 1), np.float32))
    assert probs.dtype == "float32"
    np.testing.assert_allclose(np.asarray(probs).sum(axis=1), 1.0, rtol=1e-3)


def _splits():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=600).astype(np.int32)
    images = pattern_images(labels, (28, 28, 1), rng).astype(np.float32) / 255.0
    return Split(images[:480], labels[:480]), Split(images[480:], labels[480:])


def _fast_trainer(trainer_name, seed=7):
    config = resolve_recipe(make_config(dataset="fashion_mnist", recipe="fast", trainer=trainer_name, epochs=3,
                                        batch_size=32, seed=seed))
    seed_everything(seed)
    return make_trainer(trainer_name, build_model(config.model, (28, 28, 1), 10), config, verbose=0)


@pytest.mark.parametrize("trainer_name", ["fit", "tape"])
def test_fast_recipe_learns_repeats_exactly_and_resumes_exactly(trainer_name, tmp_path):
    train, val = _splits()
    first = _fast_trainer(trainer_name)
    history = first.train(train, val)
    assert history["val_accuracy"][-1] > 0.5, history  # chance is 0.1
    second = _fast_trainer(trainer_name)
    second.train(train, val)
    assert weights_hash(first.model) == weights_hash(second.model)

    # Stop after epoch 1, resume in a fresh trainer: the schedule and the flips continue on the same curve.
    class Stop(Exception):
        pass

    def save_then_stop(epoch, trainer):
        save_checkpoint(tmp_path, epoch, trainer)
        raise Stop

    with pytest.raises(Stop):
        _fast_trainer(trainer_name).train(train, val, on_epoch_end=save_then_stop)
    resumed = _fast_trainer(trainer_name, seed=7)
    seed_everything(999)
    assert load_checkpoint(tmp_path, resumed) == 1
    resumed.train(train, val, start_epoch=1)
    assert weights_hash(resumed.model) == weights_hash(first.model)
