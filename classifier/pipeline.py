"""The lecture's top-level structure, one function per command.

    gpu_config() -> load_dataset() -> create_model() -> train_model() -> test_model()

`tasks.py` calls these; each raises UserError for bad input, which the task
prints as one line with a non-zero exit.
"""

from __future__ import annotations

import hashlib
import os
import pprint
from pathlib import Path

import numpy as np

from classifier import config as config_module
from classifier.config import Config, UserError, make_config, to_dict
from classifier.data import get_dataset, load_arrays, prepare
from classifier.download import dataset_folder, fetch, import_from, problems, verified_files
from classifier.runs import create_run_dir, environment_record, read_json, write_json

CHECKPOINT = "checkpoint"


class Interrupted(UserError):
    """Ctrl-C during training: the run folder keeps its last finished epoch."""


def data_command(dataset_name: str, data_dir: str = "", mirror: str = "", source: str = "") -> Path:
    """Download (or import with `source`) one dataset into the cache and verify it."""
    dataset = get_dataset(dataset_name)
    root = config_module.data_dir(make_config(dataset=dataset_name, data_dir=data_dir))
    if source:
        folder = import_from(dataset, root, Path(source))
    else:
        folder = fetch(dataset, root, mirror=mirror)
    if not problems(dataset, root):
        print(f"{dataset.title}: {len(dataset.files)} file(s) verified in {folder}")
    return folder


def load_dataset(config: Config):
    """The lecture's load_dataset: verified files -> scaled, split arrays, plus file hashes."""
    dataset = get_dataset(config.dataset)
    root = config_module.data_dir(config)
    hashes = verified_files(dataset, root)
    arrays = load_arrays(dataset, dataset_folder(dataset, root))
    train, val, test = prepare(arrays, limit=config.limit, val_split=config.val_split)
    print(f"Load {dataset.name} dataset: train {train.images.shape}, validation {val.images.shape}, test {test.images.shape}")
    return dataset, (train, val, test), hashes


def train_command(config: Config, resume: str = "", verbose: int | None = None) -> Path:
    """Train one model as `config` says (or continue the run folder `resume`) and write its run folder.

    Returns:
        The run folder.
    """
    # Imported here so that bad input above is reported without loading TensorFlow.
    from classifier import report
    from classifier.evaluate import evaluate
    from classifier.models import build_model
    from classifier.runtime import DurationTime, devices, gpu_config, seed_everything
    from classifier.train import dtype_policy, make_strategy, make_trainer, resolve_recipe

    if resume:
        run_dir, config = _resume_target(Path(resume))
    # The fast recipe fills in its model, batch size, epochs and learning rate;
    # the run folder keeps the resolved values.
    config = resolve_recipe(config)
    dataset = get_dataset(config.dataset)
    # Get the data before claiming a run folder, so a failed download leaves no empty run behind.
    # Like the lecture's keras.datasets loaders, the first run downloads what is missing.
    if problems(dataset, config_module.data_dir(config)):
        fetch(dataset, config_module.data_dir(config))

    gpus = gpu_config()
    seed_everything(config.seed, config.deterministic)
    with DurationTime("load data") as load_timer:
        dataset, (train, val, test), hashes = load_dataset(config)
    # Claimed only now: a --limit or --val-split that does not fit the data leaves no run folder behind.
    if not resume:
        run_dir = create_run_dir(config_module.runs_dir(config), config)
        write_json(run_dir / "config.json", to_dict(config))
    print(f"Run folder: {run_dir}")
    manifest = {
        "status": "running",
        "seed": config.seed,
        "config": to_dict(config),
        "data": {"dataset": dataset.name, "sha256": hashes, "train": len(train), "validation": len(val), "test": len(test)},
        "gpus": gpus,
        "devices_used": devices(),
        "environment": environment_record(),
    }
    write_json(run_dir / "manifest.json", manifest)
    report.show_samples(train.images, train.labels, dataset.class_names, run_dir / "samples.png")

    strategy = make_strategy(config)
    manifest["replicas"] = strategy.num_replicas_in_sync
    # MirroredStrategy needs the model's variables made under its scope.
    with strategy.scope():
        model = build_model(config.model, dataset.image_shape, len(dataset.class_names), dtype_policy(config))
    model.summary()
    if why := report.graphviz_missing():
        print(f"warning: model.png skipped: {why}")
    else:
        report.plot_model(model, run_dir / "model.png")

    trainer = make_trainer(config.trainer, model, config, verbose=verbose, strategy=strategy)
    start_epoch = load_checkpoint(run_dir, trainer) if resume else 0
    if start_epoch:
        print(f"Resuming {run_dir.name} after epoch {start_epoch}/{config.epochs}")
    try:
        with DurationTime("training") as train_timer:
            history = trainer.train(train, val, start_epoch=start_epoch,
                                    on_epoch_end=lambda epoch, t: save_checkpoint(run_dir, epoch, t))
    except KeyboardInterrupt:
        manifest["status"] = "interrupted"
        write_json(run_dir / "manifest.json", manifest)
        done = len(trainer.history["loss"])
        raise Interrupted(f"stopped after {done}/{config.epochs} epoch(s); continue with: invoke train --resume {run_dir}") from None
    pprint.pprint({key: [round(v, 4) for v in values] for key, values in history.items()}, width=120)

    with DurationTime("evaluation") as eval_timer:
        metrics = evaluate(model, test, len(dataset.class_names), config.eval_batch_size, direct=config.trainer == "tape")
    print(f"test loss {metrics['loss']:.4f}, test accuracy {metrics['accuracy']:.4f}, "
          f"argmax accuracy {metrics['argmax_accuracy']:.4f}, probabilities sum to 1: {metrics['probabilities_sum_to_one']}")

    _save_model(model, run_dir / "model.keras")
    write_json(run_dir / "history.json", {**history, "epoch_seconds": trainer.epoch_seconds})
    write_json(run_dir / "metrics.json", {**metrics, "class_names": list(dataset.class_names)})
    write_json(run_dir / "timings.json", {
        "load_seconds": load_timer.seconds,
        "train_seconds": train_timer.seconds,
        "evaluate_seconds": eval_timer.seconds,
        "epoch_seconds": trainer.epoch_seconds,
        "train_images_per_second": _images_per_second(len(train), trainer.epoch_seconds[start_epoch:]),
    })
    report.learning_curves(history, run_dir / "learning_curves.png")
    report.confusion_matrix_plot(metrics["confusion_matrix"], dataset.class_names, run_dir / "confusion_matrix.png")
    manifest["status"] = "complete"
    manifest["weights_sha256"] = weights_hash(model)
    write_json(run_dir / "manifest.json", manifest)
    print(f"Run folder: {run_dir}")
    return run_dir


def _images_per_second(num_images: int, epoch_seconds: list[float]) -> float | None:
    """Training throughput over the epochs this process ran (None if it ran none)."""
    return num_images * len(epoch_seconds) / sum(epoch_seconds) if epoch_seconds else None


def weights_hash(model) -> str:
    """SHA-256 over every weight's bytes, in order: equal hashes mean bit-identical models."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


def _save_model(model, path: Path) -> None:
    temporary = path.with_name(f".tmp-{path.name}")
    try:
        model.save(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def save_checkpoint(run_dir: Path, epoch: int, trainer) -> None:
    """Save what the next epoch needs: weights, optimizer state, history.

    The state file is written last and names the files it belongs to, so a
    kill during a save leaves the previous state file pointing at complete
    files.
    """
    folder = run_dir / CHECKPOINT
    folder.mkdir(exist_ok=True)
    tag = f"epoch-{epoch + 1:04d}"
    weights = folder / f"{tag}.weights.h5"
    optimizer = folder / f"{tag}.optimizer.npz"
    trainer.model.save_weights(folder / f".tmp-{weights.name}")
    os.replace(folder / f".tmp-{weights.name}", weights)
    with open(folder / f".tmp-{optimizer.name}", "wb") as stream:
        np.savez(stream, *[np.asarray(v) for v in trainer.optimizer.variables])
    os.replace(folder / f".tmp-{optimizer.name}", optimizer)
    write_json(folder / "state.json", {
        "epochs_done": epoch + 1,
        "weights": weights.name,
        "optimizer": optimizer.name,
        "history": trainer.history,
        "epoch_seconds": trainer.epoch_seconds,
    })
    for old in folder.glob("epoch-*"):
        if not old.name.startswith(tag):
            old.unlink(missing_ok=True)


def load_checkpoint(run_dir: Path, trainer) -> int:
    """Restore the last finished epoch into `trainer`; returns how many epochs are done."""
    state_path = run_dir / CHECKPOINT / "state.json"
    if not state_path.exists():
        return 0  # Stopped before the first epoch ended: start again from the seed.
    state = read_json(state_path)
    trainer.model.load_weights(run_dir / CHECKPOINT / state["weights"])
    trainer.optimizer.build(trainer.model.trainable_variables)
    with np.load(run_dir / CHECKPOINT / state["optimizer"]) as saved:
        values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    for variable, value in zip(trainer.optimizer.variables, values, strict=True):
        variable.assign(value)
    trainer.history = state["history"]
    trainer.epoch_seconds = state["epoch_seconds"]
    return int(state["epochs_done"])


def _resume_target(run_dir: Path) -> tuple[Path, Config]:
    if not (run_dir / "config.json").is_file():
        raise UserError(f"--resume {run_dir} is not a run folder (no config.json in it)")
    manifest = run_dir / "manifest.json"
    if manifest.is_file() and read_json(manifest).get("status") == "complete":
        raise UserError(f"--resume {run_dir} has already finished; start a new run instead")
    return run_dir, make_config(**read_json(run_dir / "config.json"))


def plot_command(config: Config, output: str = "") -> Path:
    """Write the model picture for `config`'s model and dataset with plot_model."""
    from classifier import report
    from classifier.models import build_model

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
