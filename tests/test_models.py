"""The lecture's network, three ways."""

import numpy as np
import pytest

from classifier.config import UserError
from classifier import registry
from classifier.machinery.recipes import build_model

LECTURE_MODELS = registry.LECTURE_MODELS

LECTURE_LAYERS = ["conv1", "pooling1", "conv2", "pooling2", "flatten", "dense1", "dropout", "dense2"]


@pytest.mark.parametrize("name", LECTURE_MODELS)
def test_every_way_builds_the_same_network(name):
    model = build_model(name, (32, 32, 3), 10)
    assert model.name == "tf-classifier"
    assert [layer.name for layer in model.layers if type(layer).__name__ != "InputLayer"] == LECTURE_LAYERS
    # conv1 896 + conv2 18,496 + dense1 4096*100+100 + dense2 100*10+10
    assert model.count_params() == 896 + 18496 + 409700 + 1010
    assert model.output_shape == (None, 10)


def test_shapes_and_classes_come_from_the_data():
    model = build_model("functional", (28, 28, 1), 7)
    assert model.input_shape == (None, 28, 28, 1)
    probs = model(np.zeros((2, 28, 28, 1), np.float32)).numpy()
    assert probs.shape == (2, 7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_unknown_model_lists_the_registry():
    with pytest.raises(UserError, match="unknown model 'vgg'; accepted: sequential_add, sequential_list, functional, fast_cnn"):
        build_model("vgg", (28, 28, 1), 10)
