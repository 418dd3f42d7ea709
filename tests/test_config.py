"""The one config and its override helper."""

import dataclasses

import pytest

from classifier.config import Config, UserError, make_config, runs_dir, data_dir


def test_defaults_are_the_lecture_recipe():
    config = Config()
    assert (config.dataset, config.trainer, config.epochs, config.batch_size) == ("cifar10", "fit", 5, 32)
    assert config.val_split == 0.2 and config.learning_rate == 0.001


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().epochs = 3


def test_string_overrides_are_converted():
    config = make_config(epochs="3", val_split="0.25", limit="100", deterministic="false")
    assert make_config(limit=None).limit is None
    assert (config.epochs, config.val_split, config.limit, config.deterministic) == (3, 0.25, 100, False)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"epochs": 0}, "epochs must be at least 1, got 0"),
        ({"batch_size": "-4"}, "batch_size must be at least 1, got -4"),
        ({"epochs": "abc"}, "epochs must be int, got 'abc'"),
        ({"val_split": "1.5"}, "val_split must be between 0 and 1 (exclusive), got 1.5"),
        ({"val_split": 0}, "val_split must be between 0 and 1 (exclusive), got 0.0"),
        ({"limit": 0}, "limit must be at least 1 (leave it out to train on every image), got 0"),
        ({"dataset": "imagenet"}, "unknown dataset 'imagenet'; accepted: cifar10, cifar100, mnist, fashion_mnist"),
        ({"model": "resnet"}, "unknown model 'resnet'; accepted: sequential_add, sequential_list, functional, fast_cnn"),
        ({"trainer": "sgd"}, "unknown trainer 'sgd'; accepted: fit, tape, torch"),
        ({"strategy": "tpu"}, "unknown strategy 'tpu'; accepted: default, mirrored, multiworker"),
        ({"seed": 2**32}, "seed must be between 0 and 4294967295 (2**32 - 1), got 4294967296"),
        ({"batch_size": 2**63}, f"batch_size must be at most 2147483647, got {2**63}"),
        ({"colour": "red"}, "unknown config key 'colour'"),
    ],
)
def test_bad_overrides_name_the_value(overrides, message):
    with pytest.raises(UserError) as error:
        make_config(**overrides)
    # A list of accepted names is compared whole, so that none can hide.
    assert str(error.value) == message if "accepted:" in message else message in str(error.value)


def test_folders_follow_flag_then_environment_then_project(monkeypatch, tmp_path):
    monkeypatch.setenv("CLASSIFIER_RUNS_DIR", str(tmp_path / "env-runs"))
    assert runs_dir(make_config()) == tmp_path / "env-runs"
    assert runs_dir(make_config(runs_dir=str(tmp_path / "flag"))) == tmp_path / "flag"
    monkeypatch.delenv("CLASSIFIER_DATA_DIR", raising=False)
    assert data_dir(make_config()).name == "data"


def test_checking_a_config_never_imports_tensorflow():
    """A mistyped flag is answered at once: validation uses the TensorFlow-free registry."""
    import subprocess
    import sys

    script = ("import sys\nfrom classifier.config import UserError, make_config\n"
              "make_config(model='functional', trainer='tape', recipe='fast', strategy='mirrored')\n"
              "try:\n    make_config(model='vgg')\nexcept UserError as error:\n    print(error)\n"
              "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "unknown model 'vgg'; accepted: sequential_add, sequential_list, functional, fast_cnn", "False False"]
