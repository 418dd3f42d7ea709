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
classifier/tensorboard_events.py says why).
TensorFlow is never imported on this path: a machine with only PyTorch runs it.
"""

from __future__ import annotations

import time
from pathlib import Path

from classifier import config as config_module
from classifier import numerics
from classifier.config import Config, UserError, to_dict
from classifier.files import atomic_write, write_json, write_text
from classifier.runs import create_run_dir, environment_record, finish_run, running_manifest

CHECKPOINT = Path("checkpoint") / "last.pt"


def import_torch():
    """torch, or one line saying how to install it."""
    try:
        import torch
    except ImportError:
        from classifier.doctor import torch_kernel_python

        if other := torch_kernel_python():  # the GPU image: PyTorch in an environment of its own
            raise UserError(f"--trainer torch needs PyTorch, which is in its own environment here: run "
                            f"`{other} -m invoke train ... --trainer torch` (notebooks: the kernel "
                            f"\"Python (PyTorch)\")") from None
        raise UserError("--trainer torch needs PyTorch, which is not installed in this environment; install it "
                        "with ./setup.sh, or: pip install --require-hashes -r requirements/torch-cpu.lock") from None
    return torch


def torch_environment() -> dict:
    """torch's version, CUDA/cuDNN build, devices and threads (for the manifest and `invoke reproduce`)."""
    torch = import_torch()
    import classifier.torch_train  # noqa: F401 - sets CUBLAS_WORKSPACE_CONFIG, recorded in numerics_env
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "torch": torch.__version__,
        "torch_build": {"cuda": torch.version.cuda, "cudnn": cudnn, "debug": torch.version.debug,
                        "parallel": next((line.split(":", 1)[1].strip() for line in torch.__config__.parallel_info().splitlines()
                                          if "parallel backend" in line), None)},
        "torch_devices": ["cpu"] + [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "torch_threads": torch.get_num_threads(),
    }


def train_torch(config: Config, resume_dir: Path | None = None) -> Path:
    """Train the config's torch model and write its run folder (or continue the stopped run `resume_dir`).

    Args:
        config: a validated config whose trainer is "torch" (for a resume: the run's own config).
        resume_dir: the run folder to continue from its last finished epoch, or None.

    Returns:
        The run folder.
    """
    # The numerics mode's thread counts and oneDNN cap are read by PyTorch's
    # CPU kernels too, once, when it starts: set them first.
    numerics_record = numerics.apply(config.numerics)
    import_torch()
    from classifier import report
    from classifier.commands import Interrupted, load_dataset
    from classifier.torch_models import build_torch_model, count_parameters
    from classifier.torch_train import TorchTrainer, evaluate_torch, load_checkpoint, save_checkpoint, seed_torch

    seed_torch(config.seed, config.deterministic)
    start = time.perf_counter()
    dataset, (train, val, test), hashes = load_dataset(config)
    load_seconds = time.perf_counter() - start
    # Claimed only now: a failed download, or a --limit that does not fit the data, leaves no run folder.
    run_dir = resume_dir or create_run_dir(config_module.runs_dir(config), config)
    if not resume_dir:
        write_json(run_dir / "config.json", to_dict(config))
    print(f"Run folder: {run_dir}")
    manifest = running_manifest(config, dataset, (train, val, test), hashes,
                                environment={**environment_record(tensorflow=False), **torch_environment()},
                                numerics=numerics_record)
    write_json(run_dir / "manifest.json", manifest)
    report.show_samples(train.images, train.labels, dataset.class_names, run_dir / "samples.png")

    model = build_torch_model(config.model, dataset.image_shape, len(dataset.class_names))
    summary = f"{model}\n\nparameters: {count_parameters(model):,}\n"
    print(summary)
    write_text(run_dir / "model.txt", summary)
    trainer = TorchTrainer(model, config)
    manifest["devices_used"] = [str(trainer.device)]
    start_epoch = load_checkpoint(run_dir / CHECKPOINT, trainer) if resume_dir else 0
    if start_epoch:
        print(f"Resuming {run_dir.name} after epoch {start_epoch}/{config.epochs}")
    summaries = _epoch_summaries(run_dir) if config.tensorboard else None

    def end_epoch(epoch: int, trainer: TorchTrainer) -> None:
        # TensorBoard first, as the TensorFlow trainers do: a run killed between
        # the two writes the epoch's scalars again when it resumes.
        if summaries is not None:
            summaries.write(epoch, {key: values[-1] for key, values in trainer.history.items()},
                            trainer.optimizer.param_groups[0]["lr"])
        save_checkpoint(run_dir / CHECKPOINT, trainer)

    try:
        start = time.perf_counter()
        history = trainer.train(train, val, start_epoch=start_epoch, on_epoch_end=end_epoch)
        train_seconds = time.perf_counter() - start
    except KeyboardInterrupt:
        manifest["status"] = "interrupted"
        write_json(run_dir / "manifest.json", manifest)
        done = len(trainer.history["loss"])
        raise Interrupted(f"stopped after {done}/{config.epochs} epoch(s); "
                          f"continue with: invoke train --resume {run_dir}") from None
    if summaries is not None:
        summaries.close()

    start = time.perf_counter()
    metrics = evaluate_torch(model, test, len(dataset.class_names), config.eval_batch_size)
    eval_seconds = time.perf_counter() - start
    print(f"test loss {metrics['loss']:.4f}, test accuracy {metrics['accuracy']:.4f}, "
          f"argmax accuracy {metrics['argmax_accuracy']:.4f}, "
          f"probabilities sum to 1: {metrics['probabilities_sum_to_one']}")
    ran = trainer.epoch_seconds[start_epoch:]
    timings = {
        "load_seconds": load_seconds,
        "train_seconds": train_seconds,
        "evaluate_seconds": eval_seconds,
        "epoch_seconds": trainer.epoch_seconds,
        "train_images_per_second": len(train) * len(ran) / sum(ran) if ran else None,
        # Seconds of train_seconds spent writing TensorBoard summaries (None: --tensorboard false, or no tensorboard).
        "tensorboard_seconds": summaries.seconds if summaries is not None else None,
    }
    finish_torch_run(run_dir, model, {**history, "epoch_seconds": trainer.epoch_seconds}, metrics, timings,
                     manifest, dataset.class_names)
    if summaries is not None:
        from classifier.tensorboard_events import write_run_summaries

        write_run_summaries(run_dir, to_dict(config), metrics, config.epochs)
        print(f"TensorBoard: tensorboard --logdir {run_dir.parent}")
    print(f"Run folder: {run_dir}")
    return run_dir


def _epoch_summaries(run_dir: Path):
    """`tensorboard_events.EpochScalars` for the run, or None with a warning where TensorBoard is not installed.

    A PyTorch-only environment (requirements/torch-gpu.lock alone) has no
    tensorboard package; the run goes on without event files, as it goes on
    without model.png where Graphviz is missing.
    """
    try:
        from classifier.tensorboard_events import EpochScalars
    except ImportError as error:
        print(f"warning: TensorBoard event files skipped: {error} "
              "(the tensorboard package comes with requirements/lab.lock)")
        return None
    return EpochScalars(run_dir)


def finish_torch_run(run_dir: Path, model, history: dict, metrics: dict, timings: dict, manifest: dict,
                     class_names) -> None:
    """`runs.finish_run` for a torch model: the weights as a state_dict (model.pt), then the same files.

    `model.load_state_dict(torch.load("model.pt"))` restores the weights whose
    SHA-256 the manifest holds.
    """
    torch = import_torch()
    from classifier.torch_train import weights_sha256

    with atomic_write(run_dir / "model.pt") as temporary:
        torch.save(model.state_dict(), temporary)
    finish_run(run_dir, history, metrics, timings, manifest, class_names, weights_sha256(model))
