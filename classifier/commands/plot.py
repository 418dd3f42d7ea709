"""`invoke plot`: the model's picture, drawn with keras.utils.plot_model (needs graphviz).

    invoke plot --model functional --dataset fashion_mnist --output functional.svg
"""

from __future__ import annotations

from pathlib import Path

from classifier.config import Config, UserError
from classifier.machinery.datasets import get_dataset


def plot_command(config: Config, output: str = "") -> Path:
    """Write the model picture for `config`'s model and dataset with plot_model."""
    from classifier.machinery import report
    from classifier.machinery.recipes import build_model

    dataset = get_dataset(config.dataset)
    target = Path(output or f"{config.model}-{dataset.name}.png")
    if target.suffix.lower() not in (".png", ".svg", ".pdf", ".dot"):
        raise UserError(f"--output {target} must end in .png, .svg, .pdf or .dot")
    if not target.parent.exists():
        raise UserError(f"--output folder {target.parent} does not exist")
    model = build_model(config.model, dataset.image_shape, len(dataset.class_names))
    model.summary()
    report.plot_model(model, target)
    print(f"Model picture: {target}")
    return target
