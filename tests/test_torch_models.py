"""The lecture's PyTorch network: the same parameters as the Keras one, the lecture's names, both pitfalls."""

import pytest

from conftest import require_torch

torch = require_torch()

from classifier.lecture.torch_models import TORCH_MODELS, build_torch_model, count_parameters  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPES = [((28, 28, 1), 10, 333_526), ((32, 32, 3), 10, 430_102), ((32, 32, 3), 100, 439_192)]


@pytest.mark.parametrize("name", TORCH_MODELS)
@pytest.mark.parametrize(("image_shape", "num_classes", "expected"), SHAPES)
def test_parameter_count_equals_the_keras_network(name, image_shape, num_classes, expected):
    from classifier.machinery.recipes import build_model

    keras_model = build_model("sequential_add", image_shape, num_classes)
    assert keras_model.count_params() == expected
    assert count_parameters(build_torch_model(name, image_shape, num_classes)) == expected


@pytest.mark.parametrize("name", TORCH_MODELS)
def test_channels_first_batch_gives_one_row_per_image(name):
    model = build_torch_model(name, (32, 32, 3), 10)
    assert model(torch.zeros(5, 3, 32, 32)).shape == (5, 10)


def test_lecture_layer_names():
    names = {name.rsplit(".", 1)[0] for name, _ in build_torch_model("torch_module", (28, 28, 1), 10).named_parameters()}
    assert names == {"conv1", "conv2", "fc1", "fc2"}
    module = build_torch_model("torch_module", (28, 28, 1), 10)
    assert isinstance(module.pool1, torch.nn.MaxPool2d) and isinstance(module.pool2, torch.nn.MaxPool2d)
    sequential = build_torch_model("torch_sequential", (28, 28, 1), 10)
    assert [name for name, _ in sequential.named_parameters()] == [
        "features.conv1.weight", "features.conv1.bias", "features.conv2.weight", "features.conv2.bias",
        "classifier.fc1.weight", "classifier.fc1.bias", "classifier.fc2.weight", "classifier.fc2.bias",
    ]


def test_the_lecture_faithful_build_keeps_both_pitfalls():
    torch.manual_seed(0)
    faithful = build_torch_model("torch_lecture", (28, 28, 1), 10).eval()
    images = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        first, second = faithful(images), faithful(images)
    # Softmax output: rows are probabilities already, and CrossEntropyLoss will softmax them again.
    torch.testing.assert_close(first.sum(dim=1), torch.ones(8))
    # F.dropout(x) ignores model.eval(): two calls on the same images differ.
    assert not torch.equal(first, second)


@pytest.mark.parametrize("name", ["torch_module", "torch_sequential", "torch_mixed"])
def test_the_corrected_builds_give_logits_and_no_dropout_at_evaluation(name):
    torch.manual_seed(0)
    model = build_torch_model(name, (28, 28, 1), 10)
    images = torch.randn(8, 1, 28, 28)
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(images), model(images))  # dropout on in training
        model.eval()
        first, second = model(images), model(images)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not torch.allclose(first.sum(dim=1), torch.ones(8))  # logits, not probabilities


def test_unknown_model_lists_the_accepted_names():
    from classifier.config import UserError

    with pytest.raises(UserError, match="unknown torch model 'resnet'; accepted: torch_module, torch_sequential"):
        build_torch_model("resnet", (28, 28, 1), 10)
