"""The commands behind `invoke data`, `invoke train` and `invoke plot`, in the lecture's order.

    gpu_config() -> load_dataset() -> create_model() -> train_model() -> test_model()

`train_command` is that chain with the lab's evidence around it: the run
folder, checkpoints for --resume, the manifest. Each command raises UserError
for bad input, which tasks.py prints as one line with exit code 2.
"""

from __future__ import annotations

import contextlib
import pprint
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from classifier import config as config_module
from classifier import numerics
from classifier.config import Config, UserError, make_config, resolve_recipe, to_dict
from classifier.data import get_dataset, load_arrays, prepare
from classifier.download import dataset_folder, fetch, import_from, problems, verified_files
from classifier.files import DiskFull, disk_full, read_json, write_json
from classifier.runs import (create_run_dir, environment_record, finish_run, read_run_files, running_manifest,
                             save_keras_model)


class Interrupted(UserError):
    """Ctrl-C during training: the run folder keeps its last finished epoch."""


def data_command(dataset_name: str, data_dir: str = "", mirror: str = "", source: str = "",
                 torchvision_root: str = "") -> Path:
    """Download (or import with `source`) one dataset into the cache and verify it.

    The course's own scripts then find the verified files offline: Keras'
    cache is filled, and torchvision's root (`torchvision_root`, default the
    data folder) is laid out.
    """
    dataset = get_dataset(dataset_name)
    root = config_module.data_dir(make_config(dataset=dataset_name, data_dir=data_dir))
    from classifier import course_loaders

    # Both said before a download of several minutes, not after it.
    if torchvision_root and Path(torchvision_root).expanduser().is_file():
        raise UserError(f"--torchvision-root {torchvision_root} is a file; give a folder (torchvision's root=)")
    course_loaders.check_keras_home(dataset)
    folder = import_from(dataset, root, Path(source)) if source else fetch(dataset, root, mirror=mirror)
    if not problems(dataset, root):
        print(f"{dataset.title}: {len(dataset.files)} file(s) verified in {folder}")
        # The course's scripts call keras.datasets.<name>.load_data() and torchvision.datasets.<Class>(root=...,
        # download=True): let them find these files offline.
        print(course_loaders.keras_report(dataset, course_loaders.fill_keras_cache(dataset, root)))
        try:
            laid_out = course_loaders.fill_torchvision_root(dataset, root, Path(torchvision_root or root))
        except UserError as error:
            if torchvision_root:
                raise
            # The data folder was not asked for, and the dataset itself is verified: say why, do not fail.
            print(f"torchvision root not laid out: {error}")
        else:
            print(course_loaders.torchvision_report(dataset, laid_out))
    return folder


def load_dataset(config: Config):
    """The lecture's load_dataset: verified files -> scaled, split arrays.

    Like the lecture's keras.datasets loaders, a missing dataset is downloaded
    first. Each file is hashed once.

    Returns:
        (dataset, (train, val, test) splits, {file name: SHA-256}).
    """
    dataset = get_dataset(config.dataset)
    root = config_module.data_dir(config)
    try:
        hashes = verified_files(dataset, root)
    except UserError:
        fetch(dataset, root)
        hashes = verified_files(dataset, root)
    arrays = load_arrays(dataset, dataset_folder(dataset, root))
    train, val, test = prepare(arrays, limit=config.limit, val_split=config.val_split)
    print(f"Load {dataset.name} dataset: train {train.images.shape}, validation {val.images.shape}, "
          f"test {test.images.shape}")
    return dataset, (train, val, test), hashes


def train_command(config: Config, resume: str = "", given: frozenset[str] | None = None,
                  verbose: int | None = None) -> Path:
    """Train one model as `config` says (or continue the run folder `resume`) and write its run folder.

    Args:
        config: the run's settings.
        resume: a stopped run folder to continue; its config.json replaces `config`.
        given: the config keys the person set; a recipe never overrides them
            (None: every key counts as set, as for a config read back from a run).
        verbose: Keras' verbosity (default: a progress bar in a terminal, a line per epoch otherwise).

    Returns:
        The run folder.
    """
    if resume:
        run_dir, config = _resume_target(Path(resume))
    if config.trainer == "torch":
        # The lecture's part 2: PyTorch's loop, the same run folder, no TensorFlow imported.
        from classifier.torch_run import train_torch

        return train_torch(config, run_dir if resume else None)
    if not resume:
        config, chosen = resolve_recipe(config, given)
        if chosen:
            print(f"recipe {config.recipe} chose: " + ", ".join(f"{key}={value}" for key, value in chosen.items()))
    if config.strategy == "multiworker":
        from classifier.workers import worker_role

        worker_role()  # a missing or bad TF_CONFIG is one line, before TensorFlow loads
    # Before TensorFlow starts: it reads these settings once, when it is loaded.
    numerics_record = numerics.apply(config.numerics)

    # Imported here: after the numerics settings, and so that bad input above is reported without loading TensorFlow.
    import tensorflow as tf

    from classifier.checkpoints import Checkpoints, readable_state
    from classifier.distribute import check_same_data, is_chief, make_multiworker_strategy, make_strategy, make_trainer
    from classifier.evaluate import evaluate
    from classifier.models import build_model
    from classifier.recipes import inference_model, make_optimizer, steps_per_epoch, use_mixed_precision
    from classifier.runtime import DurationTime, devices, gpu_config, seed_everything
    from classifier.tensorboard import EpochSummaries, write_run_summaries

    # Several machines: MultiWorkerMirroredStrategy configures TensorFlow's
    # runtime for the cluster, which is possible only before the first op, so
    # it comes before gpu_config() and the seeds (distribute.py).
    strategy = make_multiworker_strategy() if config.strategy == "multiworker" else None
    gpus = gpu_config()
    # A damaged checkpoint is refused (or passed over for the one before) before the run folder changes.
    resume_state = readable_state(run_dir / "checkpoint") if resume else None
    seed_everything(config.seed, config.deterministic)
    with DurationTime("load data") as load_timer:
        dataset, (train, val, test), hashes = load_dataset(config)
    strategy = strategy or make_strategy(config)
    check_same_data(strategy, hashes)
    # Only the chief writes the run folder; the other workers of a multi-worker
    # run write the same files into a scratch folder that is deleted at the end.
    chief = is_chief(strategy)
    checkpoint_folder = run_dir / "checkpoint" if resume else None
    if not chief:
        run_dir = Path(tempfile.mkdtemp(prefix="worker-run-"))
    elif not resume:
        # Claimed only now: a failed download, or a --limit that does not fit the data, leaves no run folder.
        run_dir = create_run_dir(config_module.runs_dir(config), config)
        write_json(run_dir / "config.json", to_dict(config))
    checkpoint_folder = checkpoint_folder or run_dir / "checkpoint"
    print(f"Run folder: {run_dir}" if chief else f"Scratch folder of this worker: {run_dir}")
    manifest = running_manifest(
        config, dataset, (train, val, test), hashes,
        gpus=gpus,
        devices_used=devices(),
        environment=environment_record(),
        numerics=numerics_record,
    )
    write_json(run_dir / "manifest.json", manifest)
    # Ctrl-C from here on, in any phase, leaves a run that --resume continues.
    with marks_interrupted(run_dir, manifest, config.epochs, lambda: epochs_saved(checkpoint_folder)):
        from classifier import report

        report.show_samples(train.images, train.labels, dataset.class_names, run_dir / "samples.png")

        # create_model(): under the strategy's scope, so that its variables live on every replica.
        manifest["replicas"] = strategy.num_replicas_in_sync
        if use_mixed_precision(config):
            from tensorflow import keras

            keras.mixed_precision.set_global_policy("mixed_bfloat16")
        with strategy.scope():
            model = build_model(config.model, dataset.image_shape, len(dataset.class_names))
            optimizer = make_optimizer(config, steps_per_epoch(len(train), config.batch_size))
        model.summary()
        if why := report.graphviz_missing():
            print(f"warning: model.png skipped: {why}")
        else:
            report.plot_model(model, run_dir / "model.png")

        # train_model(): the lecture's trainer, checkpointed after every epoch.
        checkpoints = Checkpoints(checkpoint_folder, model, optimizer, chief=chief)
        # TensorBoard's per-epoch scalars and graph come first, so the epoch timer in checkpoints leaves them out.
        # Only the chief writes them, as it writes the run folder.
        summaries = [EpochSummaries(run_dir, optimizer, dataset.image_shape)] if config.tensorboard and chief else []
        with strategy.scope():
            initial_epoch = checkpoints.restore(resume_state)
            trainer = make_trainer(config, model, optimizer, strategy, callbacks=[*summaries, checkpoints], verbose=verbose)
        if initial_epoch:
            print(f"Resuming {run_dir.name} after epoch {initial_epoch}/{config.epochs}")
        try:
            with DurationTime("training") as train_timer:
                trainer.train((train.images, train.labels), (val.images, val.labels), initial_epoch=initial_epoch)
        except tf.errors.OpError as error:
            if config.strategy != "multiworker":
                raise
            # A worker died or cannot be reached: the collective ops time out
            # (distribute.COLLECTIVE_TIMEOUT_SECONDS) rather than wait for ever.
            manifest["status"] = "interrupted"
            write_json(run_dir / "manifest.json", manifest)
            done = len(checkpoints.history["loss"])
            raise UserError(f"a worker stopped or cannot be reached ({type(error).__name__}) after "
                            f"{done}/{config.epochs} epoch(s); continue with: invoke train --resume "
                            f"{checkpoint_folder.parent} on every worker") from None
        for summary in summaries:
            summary.close()
        history = checkpoints.history
        pprint.pprint({key: [round(value, 4) for value in values] for key, values in history.items()}, width=120)

        # test_model(): evaluate() and predict() for `fit`, calling the model for `tape` (lecture 1.3).
        # Several workers call the model too: each evaluates the whole test set on
        # its own, where Keras 3.15's evaluate() under the multi-worker strategy
        # would report each worker's share of it.
        with strategy.scope():
            final_model = inference_model(model, config)
        with DurationTime("evaluation") as eval_timer:
            metrics = evaluate(final_model, test, len(dataset.class_names), config.eval_batch_size,
                               direct=config.trainer == "tape" or final_model is not model
                               or config.strategy == "multiworker")
        print(f"test loss {metrics['loss']:.4f}, test accuracy {metrics['accuracy']:.4f}, "
              f"argmax accuracy {metrics['argmax_accuracy']:.4f}, "
              f"probabilities sum to 1: {metrics['probabilities_sum_to_one']}")

        ran = checkpoints.epoch_seconds[initial_epoch:]
        timings = {
            "load_seconds": load_timer.seconds,
            "train_seconds": train_timer.seconds,
            "evaluate_seconds": eval_timer.seconds,
            "epoch_seconds": checkpoints.epoch_seconds,
            "train_images_per_second": len(train) * len(ran) / sum(ran) if ran else None,
            # Seconds of train_seconds spent writing TensorBoard summaries (None: --tensorboard false).
            "tensorboard_seconds": summaries[0].seconds if summaries else None,
        }
        checkpoints.close()
        finish_run(run_dir, {**history, "epoch_seconds": checkpoints.epoch_seconds}, metrics, timings, manifest,
                   dataset.class_names, save_keras_model(run_dir, final_model))
    if not chief:
        shutil.rmtree(run_dir, ignore_errors=True)
        return checkpoint_folder.parent if resume else run_dir
    if config.tensorboard:
        write_run_summaries(run_dir, to_dict(config), metrics, config.epochs)
        print(f"TensorBoard: tensorboard --logdir {run_dir.parent}")
    print(f"Run folder: {run_dir}")
    return run_dir


@contextlib.contextmanager
def marks_interrupted(run_dir: Path, manifest: dict, epochs: int, epochs_done: Callable[[], int | None]):
    """Ctrl-C or a full disk inside (setup, an epoch, evaluation, writing): mark the run and say how to continue.

    The manifest's status becomes "interrupted" unless the run had already
    finished, and the one line names the --resume command, whatever phase
    the run was in: the checkpoint holds the last finished epoch, and every
    file is written under a temporary name first, so nothing half-written is
    left (files.atomic_write, checkpoints.py).

    Args:
        run_dir: the run folder.
        manifest: the run's manifest as last written.
        epochs: the epochs the run is to train.
        epochs_done: called after the stop for the epochs the checkpoint holds (None: not known).

    Raises:
        Interrupted: after Ctrl-C.
        DiskFull: the disk filled up; its message names the file.
    """
    try:
        yield
    except (KeyboardInterrupt, Exception) as error:
        full = disk_full(error)
        if (full is None and not isinstance(error, KeyboardInterrupt)) or manifest.get("status") == "complete":
            raise
        manifest["status"] = "interrupted"
        try:
            write_json(run_dir / "manifest.json", manifest)
        except DiskFull:
            pass  # The manifest keeps "running"; the line below still says what happened and what to do.
        done = epochs_done()
        stopped = f"stopped after {done}/{epochs} epoch(s)" if done is not None else "stopped"
        resume = f"invoke train --resume {run_dir}"
        if full is not None:
            raise DiskFull(full.path, f"{stopped}; free some space, then continue with: {resume}") from None
        raise Interrupted(f"{stopped}; continue with: {resume}") from None


def epochs_saved(checkpoint_folder: Path) -> int:
    """The epochs a TensorFlow run's checkpoint holds (its state.json), 0 when there is none yet."""
    try:
        return int(read_json(Path(checkpoint_folder) / "state.json")["epochs_done"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _resume_target(run_dir: Path) -> tuple[Path, Config]:
    if not (run_dir / "config.json").is_file():
        raise UserError(f"--resume {run_dir} is not a run folder (no config.json in it)")
    config, manifest = read_run_files(run_dir)
    if manifest is not None and manifest.get("status") == "complete":
        raise UserError(f"--resume {run_dir} has already finished; start a new run instead")
    try:
        return run_dir, make_config(**config)
    except UserError as error:
        raise UserError(f"{run_dir / 'config.json'} was changed by hand: {error}; put it back as the run wrote it, "
                        "or start a new run") from None


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
