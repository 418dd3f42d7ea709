"""`invoke train --trainer torch`: the lecture's PyTorch half, leaving the same run folder as `fit` and `tape`.

    invoke train --trainer torch --dataset fashion_mnist --epochs 5
    invoke train --resume runs/20261127-160000-fashion_mnist-torch_module-torch

The data comes from the same registry and verified cache; the folder holds
config.json, history.json, metrics.json, timings.json, manifest.json (with
torch's version, CUDA/cuDNN build and devices), the weights in PyTorch's
format (model.pt, a state_dict), samples.png, learning_curves.png,
confusion_matrix.png, model.txt (the module as torch prints it),
checkpoint/last.pt (one dict, rewritten atomically after every epoch) and
tensorboard/ (the fit and tape runs' tags and folders, no model graph:
classifier/machinery/tensorboard_events.py says why).
TensorFlow is never imported on this path: a machine with only PyTorch runs it.

    invoke train --trainer torch --workers 2 --limit 6000 --epochs 2

trains with two processes on torch.distributed (classifier/machinery/torch_distribute.py),
worker 0 writing the run folder.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from classifier.config import Config
from classifier.machinery import numerics, report
from classifier.machinery.files import write_text
from classifier.machinery.lifecycle import Run, print_metrics, timings
from classifier.machinery.loading import load_dataset
from classifier.machinery.runs import environment_record, running_manifest
from classifier.machinery.torch_runs import (CHECKPOINT, epochs_saved, import_torch, load_checkpoint, read_checkpoint,
                                             save_checkpoint, save_torch_model, torch_environment)


def train_torch(config: Config, resume_dir: Path | None = None) -> Path:
    """Train the config's torch model and write its run folder (or continue the stopped run `resume_dir`).

    Args:
        config: a validated config whose trainer is "torch" (for a resume: the run's own config);
            strategy "multiworker" makes this process one worker of a torch.distributed group
            (`invoke train --trainer torch --workers N` starts them; machinery/torch_distribute.py).
        resume_dir: the run folder to continue from its last finished epoch, or None.

    Returns:
        The run folder.
    """
    # The numerics mode's thread counts and oneDNN cap are read by PyTorch's
    # CPU kernels too, once, when it starts: set them first.
    numerics_record = numerics.apply(config.numerics)
    import_torch()
    from classifier.lecture.torch_train import seed_torch

    seed_torch(config.seed, config.deterministic)
    if config.strategy != "multiworker":
        return _train_and_record(config, resume_dir, numerics_record, group=None)
    from classifier.machinery.torch_distribute import join_group, leave_group

    group = join_group(config)
    try:
        return _train_and_record(config, resume_dir, numerics_record, group)
    finally:
        leave_group()


def _train_and_record(config: Config, resume_dir: Path | None, numerics_record: dict, group) -> Path:
    """Load the data, claim the run folder (worker 0's; a scratch folder for the others), train, test, record."""
    from classifier.lecture.torch_train import evaluate_torch

    start = time.perf_counter()
    dataset, splits, hashes = load_dataset(config)
    load_seconds = time.perf_counter() - start
    # A damaged checkpoint is refused before the run folder changes.
    resume_state = read_checkpoint(resume_dir / CHECKPOINT) if resume_dir else None
    run = Run.claim(config, resume_dir, chief=group is None or group.chief)
    run.start(running_manifest(config, dataset, splits, hashes,
                               environment={**environment_record(tensorflow=False), **torch_environment()},
                               numerics=numerics_record))
    train, _, test = splits
    # Ctrl-C or a full disk from here on, in any phase, leaves a run that --resume continues.
    with run.interruptible(lambda: epochs_saved(run.folder / CHECKPOINT)):
        report.show_samples(train.images, train.labels, dataset.class_names, run.folder / "samples.png")
        model, trainer = create_torch_model(config, dataset, run, group)
        history, start_epoch, train_seconds, summaries = train_torch_model(config, run, trainer, splits, resume_state)
        start = time.perf_counter()
        metrics = evaluate_torch(model, test, len(dataset.class_names), config.eval_batch_size)
        seconds = {"load": load_seconds, "train": train_seconds, "evaluate": time.perf_counter() - start}
        print_metrics(metrics)
        # Seconds of train_seconds spent writing TensorBoard summaries (None: --tensorboard false, or no tensorboard).
        run_timings = timings(seconds, trainer.epoch_seconds, start_epoch, len(train),
                              summaries.seconds if summaries is not None else None)
        return run.finish({**history, "epoch_seconds": trainer.epoch_seconds}, metrics, run_timings,
                          dataset.class_names, save_torch_model(run.folder, model), tensorboard=summaries is not None)


def create_torch_model(config: Config, dataset, run: Run, group=None):
    """The config's nn.Module, printed and kept as model.txt, and its TorchTrainer; returns (model, trainer).

    With a torch_distribute.Group the trainer is its DistributedTorchTrainer; `model` stays the plain module.
    """
    from classifier.lecture.torch_models import build_torch_model, count_parameters
    from classifier.lecture.torch_train import TorchTrainer

    model = build_torch_model(config.model, dataset.image_shape, len(dataset.class_names))
    summary = f"{model}\n\nparameters: {count_parameters(model):,}\n"
    print(summary)
    write_text(run.folder / "model.txt", summary)
    if group is None:
        trainer = TorchTrainer(model, config)
    else:
        from classifier.machinery.torch_distribute import DistributedTorchTrainer

        trainer = DistributedTorchTrainer(model, config, group)
        run.manifest["replicas"] = group.world_size
        run.manifest["torch_distributed_backend"] = group.backend
    run.manifest["devices_used"] = [str(trainer.device)]
    return model, trainer


def train_torch_model(config: Config, run: Run, trainer, splits, resume_state: dict | None):
    """The lecture's loop, checkpointed after every epoch; returns (history, start epoch, seconds, summaries)."""
    # run.home: the stopped run, which the other workers of a resumed multi-worker run read too.
    start_epoch = load_checkpoint(run.home / CHECKPOINT, trainer, resume_state) if resume_state else 0
    if start_epoch:
        print(f"Resuming {run.home.name} after epoch {start_epoch}/{config.epochs}")
    summaries = _epoch_summaries(run.folder) if config.tensorboard else None

    def end_epoch(epoch: int, trainer) -> None:
        # TensorBoard first, as the TensorFlow trainers do: a run killed between
        # the two writes the epoch's scalars again when it resumes.
        if summaries is not None:
            summaries.write(epoch, {key: values[-1] for key, values in trainer.history.items()},
                            trainer.optimizer.param_groups[0]["lr"])
        save_checkpoint(run.folder / CHECKPOINT, trainer)

    train, val, _ = splits
    epochs_done = lambda: len(trainer.history["loss"])  # noqa: E731
    with _lost_workers(config, run, epochs_done):
        start = time.perf_counter()
        history = trainer.train(train, val, start_epoch=start_epoch, on_epoch_end=end_epoch)
        train_seconds = time.perf_counter() - start
    if summaries is not None:
        summaries.close()
    return history, start_epoch, train_seconds, summaries


def _lost_workers(config: Config, run: Run, epochs_done):
    """torch_distribute.lost_workers for a multi-worker run (a dead worker is one line); nothing for one process."""
    if config.strategy != "multiworker":
        return contextlib.nullcontext()
    from classifier.machinery.torch_distribute import lost_workers

    return lost_workers(config, run, epochs_done)


def _epoch_summaries(run_dir: Path):
    """`tensorboard_events.EpochScalars` for the run, or None with a warning where TensorBoard is not installed.

    A PyTorch-only environment (requirements/torch-gpu.lock alone) has no
    tensorboard package; the run goes on without event files, as it goes on
    without model.png where Graphviz is missing.
    """
    try:
        from classifier.machinery.tensorboard_events import EpochScalars
    except ImportError as error:
        print(f"warning: TensorBoard event files skipped: {error} "
              "(the tensorboard package comes with requirements/lab.lock)")
        return None
    return EpochScalars(run_dir)
