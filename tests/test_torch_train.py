"""The lecture's PyTorch loop: it learns, repeats bit for bit, resumes bit for bit, evaluates with cross-checks."""

import numpy as np
import pytest

from conftest import pattern_images, require_torch

torch = require_torch()

from classifier.config import make_config  # noqa: E402
from classifier.lecture.split import Split  # noqa: E402
from classifier.lecture.torch_models import build_torch_model  # noqa: E402
from classifier.lecture.torch_train import (  # noqa: E402
    HISTORY_KEYS, TorchTrainer, evaluate_torch, seed_torch, to_tensors, weights_sha256,
)
from classifier.machinery.torch_runs import load_checkpoint, save_checkpoint  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _splits(num_train=480, num_val=120, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=num_train + num_val).astype(np.int32)
    images = pattern_images(labels, (28, 28, 1), rng).astype(np.float32) / 255.0
    return Split(images[:num_train], labels[:num_train]), Split(images[num_train:], labels[num_train:])


def _trainer(model="torch_module", epochs=2, seed=7, **kwargs):
    config = make_config(dataset="fashion_mnist", epochs=epochs, seed=seed)
    seed_torch(seed)
    return TorchTrainer(build_torch_model(model, (28, 28, 1), 10), config, verbose=False, **kwargs)


def test_images_go_channels_first_in_minus_one_to_one():
    split = Split(np.stack([np.zeros((28, 28, 1)), np.ones((28, 28, 1))]).astype(np.float32), np.array([3, 4]))
    images, labels = to_tensors(split)
    assert images.shape == (2, 1, 28, 28) and images.dtype == torch.float32
    assert images[0].min() == -1.0 and images[1].max() == 1.0
    assert labels.dtype == torch.int64 and labels.tolist() == [3, 4]


@pytest.mark.parametrize("model", ["torch_module", "torch_sequential", "torch_mixed"])
def test_trainer_learns_and_reports_every_epoch(model):
    trainer = _trainer(model, epochs=3)
    history = trainer.train(*_splits())
    assert set(history) == set(HISTORY_KEYS) and all(len(values) == 3 for values in history.values())
    assert history["loss"][-1] < history["loss"][0]
    assert history["val_accuracy"][-1] > 0.5, history  # chance is 0.1
    assert len(trainer.epoch_seconds) == 3


def test_same_seed_gives_bit_identical_weights_and_another_seed_does_not():
    trainers, histories = [], []
    for seed in (7, 7, 8):  # each seeded and trained in turn, as two runs would be
        trainers.append(_trainer(seed=seed))
        histories.append(trainers[-1].train(*_splits()))
    first, second, other = trainers
    assert weights_sha256(first.model) == weights_sha256(second.model) != weights_sha256(other.model)
    assert histories[0] == histories[1]
    assert torch.are_deterministic_algorithms_enabled()


def test_worker_processes_give_the_same_weights_twice():
    hashes = []
    for _ in range(2):
        trainer = _trainer(epochs=1, num_workers=2)
        trainer.train(*_splits(num_train=160, num_val=40))
        hashes.append(weights_sha256(trainer.model))
    assert hashes[0] == hashes[1]


@pytest.mark.parametrize("model", ["torch_module", "torch_lecture"])
def test_resume_from_a_checkpoint_is_bit_identical(tmp_path, model):
    train, val = _splits()
    straight = _trainer(model, epochs=3)
    straight.train(train, val)

    # Stop after epoch 1; a fresh process (a new trainer, seeded as at start) continues.
    stopped = _trainer(model, epochs=3)
    path = tmp_path / "checkpoint.pt"
    stopped.config = make_config(stopped.config, epochs=1)
    stopped.train(train, val, on_epoch_end=lambda epoch, trainer: save_checkpoint(path, trainer))
    resumed = _trainer(model, epochs=3)
    assert load_checkpoint(path, resumed) == 1
    resumed.train(train, val, start_epoch=1)

    assert weights_sha256(resumed.model) == weights_sha256(straight.model)
    assert resumed.history == straight.history
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # the atomic write left no temporary file


def test_no_checkpoint_means_start_from_epoch_zero(tmp_path):
    assert load_checkpoint(tmp_path / "missing.pt", _trainer()) == 0


def test_evaluation_cross_checks_agree_for_the_corrected_model():
    trainer = _trainer(epochs=2)
    train, val = _splits()
    trainer.train(train, val)
    metrics = evaluate_torch(trainer.model, val, 10)
    assert metrics["accuracy"] == pytest.approx(metrics["argmax_accuracy"], abs=1e-6)
    assert metrics["loss"] == pytest.approx(metrics["cross_entropy"], rel=1e-4)  # logits: both are the true test loss
    assert metrics["probabilities_sum_to_one"] and metrics["num_images"] == 120
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.sum() == 120 and np.trace(matrix) / 120 == pytest.approx(metrics["argmax_accuracy"])
    assert len(metrics["per_class_accuracy"]) == 10


def test_evaluation_shows_the_lecture_faithful_pitfalls():
    trainer = _trainer("torch_lecture", epochs=2)
    train, val = _splits()
    trainer.train(train, val)
    metrics = evaluate_torch(trainer.model, val, 10)
    # Softmax fed to CrossEntropyLoss: the loss printed is far from the true cross-entropy
    # and cannot go below log(1 + 9/e) for 10 classes.
    assert metrics["loss"] > np.log(1 + 9 / np.e) - 1e-4
    assert abs(metrics["loss"] - metrics["cross_entropy"]) > 0.1
    assert metrics["probabilities_sum_to_one"]
    # Dropout at evaluation: calling the model twice on the same images gives two answers.
    images, _ = to_tensors(val)
    trainer.model.eval()
    with torch.no_grad():
        assert not torch.equal(trainer.model(images), trainer.model(images))
