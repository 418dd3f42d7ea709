"""The registry's names are exactly the ones the modules build: a name added on one side only fails here."""

import dataclasses

import pytest

from classifier import registry
from classifier.config import Config, UserError
from conftest import require_torch


def test_models_are_the_ones_build_model_builds():
    from classifier.machinery.recipes import build_model

    for name in registry.MODELS:
        assert build_model(name, (28, 28, 1), 10).output_shape == (None, 10), name
    with pytest.raises(UserError) as refused:
        build_model("no_such_model", (28, 28, 1), 10)
    assert str(refused.value).endswith("accepted: " + ", ".join(registry.MODELS))


def test_datasets_are_the_ones_the_dataset_registry_holds():
    from classifier.machinery.datasets import DATASETS

    assert registry.DATASETS == tuple(DATASETS)  # the names config.py accepts, without reading the files' specs


def test_trainers_are_the_ones_train_makes():
    from classifier.lecture.train import TRAINERS

    assert tuple(TRAINERS) == registry.TRAINERS


def test_torch_models_are_the_ones_torch_models_builds():
    require_torch()
    from classifier.lecture.torch_models import TORCH_MODELS

    assert tuple(TORCH_MODELS) == registry.TORCH_MODELS


def test_numerics_modes_are_the_ones_numerics_sets():
    from classifier.machinery.numerics import MODES

    assert tuple(MODES) == registry.NUMERICS


def test_each_recipe_sets_only_config_fields():
    fields = {field.name for field in dataclasses.fields(Config)}
    assert tuple(registry.HYP) == registry.RECIPES
    for recipe, settings in ((name, hyp["config"]) for name, hyp in registry.HYP.items()):
        assert set(settings) <= fields, recipe
        assert settings.get("model", "sequential_add") in registry.MODELS, recipe
