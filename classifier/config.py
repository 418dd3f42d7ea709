"""One frozen configuration for a training run, and the one way to change it.

Every field has the lecture's default. Overrides from the command line or a
run manifest go through `make_config`, which rejects an unknown key, a wrong
type or an out-of-range value with a message that names it:

    >>> make_config(epochs=2, dataset="fashion_mnist").epochs
    2
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass
from pathlib import Path

# The repository root: the default data and runs folders live beside tasks.py.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


# NumPy's and TensorFlow's seeds are unsigned 32-bit numbers.
MAX_SEED = 2**32 - 1
# Epochs and batch sizes become TensorFlow's int32 and int64 tensors and torch's
# loop counts; a larger number fails deep inside them, after the run folder exists.
MAX_COUNT = 2**31 - 1


class UserError(Exception):
    """Bad input from a person: shown as one line, never as a traceback."""


class Interrupted(UserError):
    """Ctrl-C during training: the run folder keeps its last finished epoch (tasks.py exits with 130)."""


@dataclass(frozen=True)
class Config:
    dataset: str = "cifar10"  # a name from registry.DATASETS (machinery/datasets.py holds their files)
    model: str = "sequential_add"  # a name from registry.MODELS (registry.TORCH_MODELS for the torch trainer)
    trainer: str = "fit"  # registry.TRAINERS: "fit" (1.2), "tape" (1.3); or registry.TORCH_TRAINERS: "torch" (part 2)
    epochs: int = 5  # full passes over the training part
    batch_size: int = 32  # images per optimizer step
    learning_rate: float = 0.001  # RMSprop step size (Keras' default, as in the lecture)
    val_split: float = 0.2  # fraction at the END of the training set kept for validation
    limit: int | None = None  # train on the first N training images only; None means all of them
    seed: int = 42  # seeds Python, NumPy, TensorFlow and every epoch's shuffle; 0 to 2**32 - 1
    deterministic: bool = True  # TensorFlow's deterministic ops: same numbers on a rerun
    data_dir: str = ""  # dataset cache; "" means $CLASSIFIER_DATA_DIR or <project>/data
    runs_dir: str = ""  # where run folders go; "" means $CLASSIFIER_RUNS_DIR or <project>/runs
    eval_batch_size: int = 256  # images per evaluation step; does not change the numbers
    recipe: str = "lecture"  # a name from registry.RECIPES: "lecture" or "fast" (classifier/machinery/recipes.py)
    strategy: str = "default"  # a name from registry.STRATEGIES: "default" (one device), "mirrored" or "multiworker"
    numerics: str = "fastest"  # a name from registry.NUMERICS: "fastest" or "portable" (classifier/machinery/numerics.py)
    tensorboard: bool = True  # write TensorBoard event files into RUN/tensorboard (classifier/machinery/tensorboard.py)


def make_config(base: Config | None = None, **overrides) -> Config:
    """Return `base` (default: the lecture's config) with `overrides` applied.

    Args:
        base: the config to start from.
        **overrides: field names and new values; values given as strings (from a
            command line) are converted to the field's type.

    Returns:
        A new, validated Config.

    Raises:
        UserError: an unknown key, a value of the wrong type, or a value out of range.
    """
    base = base or Config()
    types = typing.get_type_hints(Config)
    changes = {}
    for key, value in overrides.items():
        if key not in types:
            raise UserError(f"unknown config key {key!r}; accepted: {', '.join(types)}")
        changes[key] = _coerce(key, value, types[key])
    # The torch trainer trains PyTorch modules: with no model named, the lecture's class.
    if changes.get("trainer") == "torch" and "model" not in changes and base.model == Config.model:
        changes["model"] = "torch_module"
    config = dataclasses.replace(base, **changes)
    validate(config)
    return config


def _coerce(key: str, value, kind):
    """Convert one override to the field's type, naming the key when it cannot be."""
    if type(None) in typing.get_args(kind):  # Optional field: None stays None.
        if value is None:
            return None
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is bool and isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    if isinstance(value, str) and kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    raise UserError(f"{key} must be {kind.__name__}, got {value!r}")


def validate(config: Config) -> None:
    """Raise UserError for the first field that is out of range."""
    # The registry is plain data, without TensorFlow, so a bad flag is answered at once.
    from classifier import registry

    _one_of("dataset", config.dataset, registry.DATASETS)
    _one_of("trainer", config.trainer, registry.TRAINERS + registry.TORCH_TRAINERS)
    if config.trainer in registry.TORCH_TRAINERS:
        if config.model not in registry.TORCH_MODELS:
            raise UserError(f"model {config.model!r} is a Keras model; --trainer torch trains one of: "
                            f"{', '.join(registry.TORCH_MODELS)}")
    elif config.model in registry.TORCH_MODELS:
        raise UserError(f"model {config.model!r} is a PyTorch module; train it with --trainer torch")
    else:
        _one_of("model", config.model, registry.MODELS)
    _one_of("recipe", config.recipe, registry.RECIPES)
    _one_of("strategy", config.strategy, registry.STRATEGIES)
    if config.trainer in registry.TORCH_TRAINERS:
        # "multiworker" is torch.distributed there (machinery/torch_distribute.py), started by --workers N.
        for key, accepted in (("recipe", ("lecture",)), ("strategy", ("default", "multiworker"))):
            if getattr(config, key) not in accepted:
                raise UserError(f"--{key} {getattr(config, key)} is for the TensorFlow trainers (fit, tape); "
                                f"--trainer torch takes --{key} {' or '.join(accepted)} only")
    _one_of("numerics", config.numerics, registry.NUMERICS)
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if getattr(config, key) < 1:
            raise UserError(f"{key} must be at least 1, got {getattr(config, key)}")
        if getattr(config, key) > MAX_COUNT:
            raise UserError(f"{key} must be at most {MAX_COUNT}, got {getattr(config, key)}")
    if config.limit is not None and config.limit < 1:
        raise UserError(f"limit must be at least 1 (leave it out to train on every image), got {config.limit}")
    if not 0.0 < config.val_split < 1.0:
        raise UserError(f"val_split must be between 0 and 1 (exclusive), got {config.val_split}")
    if not config.learning_rate > 0.0:
        raise UserError(f"learning_rate must be above 0, got {config.learning_rate}")
    if not 0 <= config.seed <= MAX_SEED:
        raise UserError(f"seed must be between 0 and {MAX_SEED} (2**32 - 1), got {config.seed}")


def _one_of(key: str, value: str, accepted) -> None:
    if value not in accepted:
        raise UserError(f"unknown {key} {value!r}; accepted: {', '.join(accepted)}")


def data_dir(config: Config) -> Path:
    """The dataset cache folder: the flag, else $CLASSIFIER_DATA_DIR, else <project>/data."""
    return Path(config.data_dir or os.environ.get("CLASSIFIER_DATA_DIR") or PROJECT_ROOT / "data")


def runs_dir(config: Config) -> Path:
    """The runs folder: the flag, else $CLASSIFIER_RUNS_DIR, else <project>/runs."""
    return Path(config.runs_dir or os.environ.get("CLASSIFIER_RUNS_DIR") or PROJECT_ROOT / "runs")


def to_dict(config: Config) -> dict:
    """The config as plain JSON-ready values, for the run folder."""
    return dataclasses.asdict(config)


def resolve_recipe(config: Config, given: frozenset[str] | None = None) -> tuple[Config, dict]:
    """Fill in the recipe's settings (registry.HYP[recipe]["config"]) for every field the person did not set.

    Args:
        config: the config as made from the person's flags.
        given: the keys the person set (None: all of them, as for a config
            read back from a run folder); those are never overridden.

    Returns:
        (the resolved config, {key: value} of what the recipe chose).
    """
    from classifier import registry

    settings = registry.HYP[config.recipe]["config"]
    chosen = {key: value for key, value in settings.items()
              if given is not None and key not in given and getattr(config, key) != value}
    return dataclasses.replace(config, **chosen), chosen
