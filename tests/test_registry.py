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


def test_every_registry_list_is_exactly_what_its_module_holds():
    """config.py checks names against registry.py without importing TensorFlow or PyTorch; here each list
    meets the module that builds what it names, in the order the error messages list them."""
    from classifier.lecture.models import BUILDS
    from classifier.lecture.train import TRAINERS, FitTrainer, TapeTrainer
    from classifier.machinery.datasets import DATASETS
    from classifier.machinery.numerics import DEFAULT_MODE, MODES

    assert registry.DATASETS == tuple(DATASETS)
    assert registry.MODELS == (*BUILDS, "fast_cnn") and set(registry.LECTURE_MODELS) == set(BUILDS)
    assert registry.TRAINERS == tuple(TRAINERS) and TRAINERS == {"fit": FitTrainer, "tape": TapeTrainer}
    assert registry.NUMERICS == tuple(MODES) and DEFAULT_MODE == Config().numerics
    # Last, so that an environment made without PyTorch (LAB_TORCH=0) still checks the others before it skips.
    require_torch()
    from classifier.lecture.torch_models import TORCH_MODELS

    assert registry.TORCH_MODELS == tuple(TORCH_MODELS)


def test_each_recipe_sets_only_config_fields():
    fields = {field.name for field in dataclasses.fields(Config)}
    assert tuple(registry.HYP) == registry.RECIPES
    for recipe, settings in ((name, hyp["config"]) for name, hyp in registry.HYP.items()):
        assert set(settings) <= fields, recipe
        assert settings.get("model", "sequential_add") in registry.MODELS, recipe
