"""The lecture's network in PyTorch (part 2 of the week), written the ways the class writes it.

The same layers as the Keras network in `models.py` (and the same number of
parameters: 333,526 on 28x28x1 images with 10 classes), channels-first:

    conv1 (3x3, 32, same) -> relu -> pool1 (2x2) -> conv2 (3x3, 64, same) -> relu -> pool2 (2x2)
    -> flatten -> fc1 (100) -> relu -> dropout -> fc2 (num_classes)

    TorchClsfModel       layers as attributes, torch.nn.functional in forward (the lecture's class)
    SequentialClsfModel  the same layers in two nn.Sequential blocks
    MixedClsfModel       a Sequential feature block, the head as attributes with F in forward

The lecture's class has two pitfalls that the lecture-faithful build
(`torch_lecture`: `TorchClsfModel(softmax_output=True, dropout_in_eval=True)`)
keeps on purpose, so that the lab can measure them (`torch_train.py`,
notebooks/04_pytorch_classifier.ipynb):

1. `forward` ends in `F.softmax`, and the loss is `nn.CrossEntropyLoss`, which
   applies log-softmax itself: the loss sees softmax twice. Its gradients
   shrink as the model grows sure, and the printed loss can never go below
   about 1.46 for 10 classes.
2. `F.dropout(x)` without `training=self.training` drops half of the values
   at evaluation too: `model.eval()` does not stop it, so test predictions
   are noisy and change from call to call.

The corrected builds return logits (CrossEntropyLoss takes them as they are;
apply softmax to get probabilities) and drop out only in training. Dropout is
0.5, the rate `F.dropout` uses by default in the lecture's script (the Keras
network drops 0.2). Only the lecture's class gets a faithful build: the
Sequential ones use `nn.Dropout`, a module that `model.eval()` does switch off.

    model = build_torch_model("torch_module", image_shape=(28, 28, 1), num_classes=10)
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

DROPOUT = 0.5  # F.dropout's default, which the lecture's script uses


def _flat_size(image_shape: tuple[int, int, int]) -> int:
    """Values after pool2: 64 feature maps at a quarter of the height and width."""
    height, width, _ = image_shape
    return 64 * (height // 4) * (width // 4)


class TorchClsfModel(nn.Module):
    """The lecture's class: layers as attributes, `torch.nn.functional` in `forward`.

    Args:
        image_shape: (height, width, channels) of the input images, from the dataset.
        num_classes: outputs of fc2, from the dataset.
        softmax_output: pitfall 1, as the lecture: end in `F.softmax`, which
            CrossEntropyLoss then softmaxes again. False returns logits.
        dropout_in_eval: pitfall 2, as the lecture: `F.dropout(x)`, which stays on
            after `model.eval()`. False passes `training=self.training`.

    The two flags are apart so that one trained model can be evaluated with
    pitfall 2 switched off: training is the same either way.
    """

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int,
                 softmax_output: bool = False, dropout_in_eval: bool = False):
        super().__init__()
        self.softmax_output = softmax_output
        self.dropout_in_eval = dropout_in_eval
        self.conv1 = nn.Conv2d(in_channels=image_shape[2], out_channels=32, kernel_size=3, padding=1)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(_flat_size(image_shape), 100)
        self.fc2 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(F.relu(self.conv1(x)))
        x = self.pool2(F.relu(self.conv2(x)))
        # The lecture writes x.view(-1, 64 * 8 * 8); view fails when a CPU kernel
        # hands back a channels-last tensor, flatten copies only then.
        x = torch.flatten(x, start_dim=1)
        x = F.relu(self.fc1(x))
        if self.dropout_in_eval:
            x = F.dropout(x, DROPOUT)  # training=True is F.dropout's default: on even after model.eval()
        else:
            x = F.dropout(x, DROPOUT, training=self.training)
        x = self.fc2(x)
        if self.softmax_output:
            return F.softmax(x, dim=1)  # CrossEntropyLoss will apply log-softmax on top
        return x  # logits: CrossEntropyLoss applies log-softmax itself


class SequentialClsfModel(nn.Module):
    """The same network as two `nn.Sequential` blocks with the lecture's layer names.

    Args:
        image_shape: (height, width, channels) of the input images.
        num_classes: outputs of fc2.
    """

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(image_shape[2], 32, 3, padding=1)),
            ("relu1", nn.ReLU()),
            ("pool1", nn.MaxPool2d(2, 2)),
            ("conv2", nn.Conv2d(32, 64, 3, padding=1)),
            ("relu2", nn.ReLU()),
            ("pool2", nn.MaxPool2d(2, 2)),
        ]))
        self.classifier = nn.Sequential(OrderedDict([
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(_flat_size(image_shape), 100)),
            ("relu3", nn.ReLU()),
            ("dropout", nn.Dropout(DROPOUT)),  # a module: off after model.eval()
            ("fc2", nn.Linear(100, num_classes)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MixedClsfModel(nn.Module):
    """A mix of the two: the convolutions in one `nn.Sequential`, the head as attributes.

    Args:
        image_shape: (height, width, channels) of the input images.
        num_classes: outputs of fc2.
    """

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(image_shape[2], 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
        )
        self.fc1 = nn.Linear(_flat_size(image_shape), 100)
        self.fc2 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.features(x), start_dim=1)
        x = F.dropout(F.relu(self.fc1(x)), DROPOUT, training=self.training)
        return self.fc2(x)


# Name -> builder(image_shape, num_classes). The names are kept in
# classifier/registry.py (TORCH_MODELS) too, which the config validates
# against without importing torch; tests/test_registry.py keeps them equal.
TORCH_MODELS = {
    "torch_module": lambda shape, classes: TorchClsfModel(shape, classes),
    "torch_sequential": SequentialClsfModel,
    "torch_mixed": MixedClsfModel,
    "torch_lecture": lambda shape, classes: TorchClsfModel(shape, classes, softmax_output=True, dropout_in_eval=True),
}


def build_torch_model(name: str, image_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build one of TORCH_MODELS for images of `image_shape` (height, width, channels).

    Args:
        name: a key of TORCH_MODELS.
        image_shape: (height, width, channels), as the dataset registry gives it.
        num_classes: number of classes.

    Returns:
        The model, with PyTorch's default initialisation from the global RNG.
    """
    if name not in TORCH_MODELS:
        from classifier.config import UserError

        raise UserError(f"unknown torch model {name!r}; accepted: {', '.join(TORCH_MODELS)}")
    return TORCH_MODELS[name](tuple(image_shape), num_classes)


def outputs_probabilities(model: nn.Module) -> bool:
    """Whether `model` already ends in softmax (the lecture-faithful build) rather than logits."""
    return bool(getattr(model, "softmax_output", False))


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, comparable with Keras' `count_params()`."""
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
