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
worker 0 writing the run folder. Building and training are machinery/torch_runs.py's
`create_torch_model` and `train_torch_model`.
"""

from __future__ import annotations

import time
from pathlib import Path

from classifier.config import Config
from classifier.machinery import numerics, report
from classifier.machinery.lifecycle import Run, print_metrics, timings
from classifier.machinery.loading import load_dataset
from classifier.machinery.runs import environment_record, running_manifest
from classifier.machinery.torch_runs import (CHECKPOINT, create_torch_model, epochs_saved, import_torch,
                                             read_checkpoint, save_torch_model, torch_environment, torch_group,
                                             train_torch_model)


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
    from classifier.lecture.torch_train import evaluate_torch, seed_torch

    seed_torch(config.seed, config.deterministic)
    with torch_group(config) as group:
        start = time.perf_counter()
        dataset, splits, hashes = load_dataset(config)
        load_seconds = time.perf_counter() - start
        # A damaged checkpoint is refused before the run folder changes.
        resume_state = read_checkpoint(resume_dir / CHECKPOINT) if resume_dir else None
        # Worker 0 writes the run folder; the other workers write a scratch folder deleted at the end.
        run = Run.claim(config, resume_dir, chief=group is None or group.chief)
        run.start(running_manifest(config, dataset, splits, hashes,
                                   environment={**environment_record(tensorflow=False), **torch_environment()},
                                   numerics=numerics_record))
        train, _, test = splits
        # Ctrl-C or a full disk from here on, in any phase, leaves a run that --resume continues.
        with run.interruptible(lambda: epochs_saved(run.folder / CHECKPOINT)):
            report.show_samples(train.images, train.labels, dataset.class_names, run.folder / "samples.png")
            model, trainer = create_torch_model(config, dataset, run, group)
            history, start_epoch, train_seconds, summaries = train_torch_model(config, run, trainer, splits,
                                                                               resume_state)
            start = time.perf_counter()
            metrics = evaluate_torch(model, test, len(dataset.class_names), config.eval_batch_size)
            seconds = {"load": load_seconds, "train": train_seconds, "evaluate": time.perf_counter() - start}
            print_metrics(metrics)
            # Seconds of train_seconds spent writing TensorBoard summaries (None: --tensorboard false, or none).
            run_timings = timings(seconds, trainer.epoch_seconds, start_epoch, len(train),
                                  summaries.seconds if summaries is not None else None)
            return run.finish({**history, "epoch_seconds": trainer.epoch_seconds}, metrics, run_timings,
                              dataset.class_names, save_torch_model(run.folder, model),
                              tensorboard=summaries is not None)
