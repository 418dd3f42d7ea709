"""What a PyTorch run keeps in its folder: checkpoint/last.pt, model.pt, and torch's part of the manifest.

    save_checkpoint(run_dir / CHECKPOINT, trainer)     # after every epoch, atomically
    start_epoch = load_checkpoint(run_dir / CHECKPOINT, trainer)
    weights = save_torch_model(run_dir, model)         # model.pt, a state_dict; its SHA-256 for the manifest

A checkpoint is one dict (weights, optimizer, every RNG state, epochs done,
history), so a run killed at any moment continues bit-identically.
`torch_group`, `create_torch_model` and `train_torch_model` are the build and
train steps of `invoke train --trainer torch` (classifier/commands/train_torch.py). torch is
imported inside each function, so a machine without it gets `import_torch`'s
one line rather than a traceback.
"""

from __future__ import annotations

import contextlib
import io
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from classifier.config import Config, UserError
from classifier.machinery.files import atomic_write, write_text

if TYPE_CHECKING:
    from classifier.machinery.lifecycle import Run

CHECKPOINT = Path("checkpoint") / "last.pt"


def import_torch():
    """torch, or one line saying how to install it."""
    try:
        import torch
    except ImportError:
        if other := torch_kernel_python():  # the GPU image: PyTorch in an environment of its own
            raise UserError(f"--trainer torch needs PyTorch, which is in its own environment here: run "
                            f"`{other} -m invoke train ... --trainer torch` (notebooks: the kernel "
                            f"\"Python (PyTorch)\")") from None
        raise UserError("--trainer torch needs PyTorch, which is not installed in this environment; install it "
                        "with ./setup.sh, or: pip install --require-hashes -r requirements/torch-cpu.lock") from None
    return torch


def torch_kernel_python() -> str | None:
    """The Python of the "pytorch" Jupyter kernel when it is another environment than this one, else None.

    The GPU image keeps PyTorch's CUDA build out of TensorFlow's environment
    (docker/Dockerfile says why): /opt/venv-torch, behind the kernel that notebook 04 names.
    """
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        python = KernelSpecManager().get_kernel_spec("pytorch").argv[0]
    except Exception:  # noqa: BLE001 - no Jupyter, or no such kernel: nothing to point at
        return None
    if python in ("python", "python3") or Path(python).parent.parent == Path(sys.prefix):
        return None  # this very environment
    return python


def torch_environment() -> dict:
    """torch's version, CUDA/cuDNN build, devices and threads (for the manifest and `invoke reproduce`)."""
    torch = import_torch()
    import classifier.lecture.torch_train  # noqa: F401 - sets CUBLAS_WORKSPACE_CONFIG, recorded in numerics_env
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "torch": torch.__version__,
        "torch_build": {"cuda": torch.version.cuda, "cudnn": cudnn, "debug": torch.version.debug,
                        "parallel": next((line.split(":", 1)[1].strip() for line in torch.__config__.parallel_info().splitlines()
                                          if "parallel backend" in line), None)},
        "torch_devices": ["cpu"] + [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "torch_threads": torch.get_num_threads(),
    }


def save_torch_model(run_dir: Path, model) -> str:
    """Save the weights as RUN/model.pt (a state_dict); returns their SHA-256 for `runs.finish_run`.

    `model.load_state_dict(torch.load("model.pt"))` restores the weights whose
    SHA-256 the manifest holds.
    """
    from classifier.lecture.torch_train import weights_sha256

    with atomic_write(run_dir / "model.pt") as temporary:
        # Through Python's own write (save_checkpoint says why).
        temporary.write_bytes(to_bytes(model.state_dict()))
    return weights_sha256(model)


def checkpoint_dict(trainer) -> dict:
    """Everything the next epoch needs, in one dict (nanoGPT's checkpoint shape)."""
    torch = import_torch()
    return {
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "rng": {
            "loader": trainer.generator.get_state(),
            "torch": torch.get_rng_state(),  # dropout masks on the CPU
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        },
        "epochs_done": len(trainer.history["loss"]),
        "history": trainer.history,
        "epoch_seconds": trainer.epoch_seconds,
    }


def save_checkpoint(path: Path, trainer) -> Path:
    """Write `checkpoint_dict(trainer)` to `path` atomically (files.atomic_write: temporary name, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as temporary:
        # torch.save writing to a file reports a full disk as RuntimeError
        # "[enforce fail at inline_container.cc...]"; Python's write gives
        # OSError ENOSPC, which atomic_write names (files.DiskFull).
        temporary.write_bytes(to_bytes(checkpoint_dict(trainer)))
    return path


def to_bytes(value) -> bytes:
    """`value` as torch.save writes it."""
    torch = import_torch()
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def epochs_saved(path: Path) -> int | None:
    """The epochs the checkpoint at `path` holds: 0 without one, None when it cannot be read."""
    if not Path(path).exists():
        return 0
    torch = import_torch()
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["epochs_done"])
    except Exception:  # noqa: BLE001 - any damage means "not known"; the caller only reports it
        return None


def read_checkpoint(path: Path) -> dict | None:
    """The checkpoint dict at `path`, None when there is none (killed before the first epoch ended).

    Raises:
        UserError: the file is damaged (torch keeps one checkpoint, so there is none to fall back to).
    """
    path = Path(path)
    if not path.exists():
        return None
    torch = import_torch()
    try:
        # weights_only=False: the dict holds NumPy's and Python's RNG states, and
        # it is a file this lab wrote into its own run folder.
        state = torch.load(path, map_location="cpu", weights_only=False)
        int(state["epochs_done"])
        return state
    except Exception:  # noqa: BLE001 - torch.load fails in many ways on a damaged file; all mean the same
        raise UserError(f"the checkpoint {path} is damaged, so this run cannot continue; start a new run with "
                        f"the settings in {path.parent.parent / 'config.json'}") from None


def load_checkpoint(path: Path, trainer, state: dict | None = None) -> int:
    """Restore a checkpoint into `trainer` (a TorchTrainer); returns the epochs it had finished (0 if none).

    Args:
        path: the checkpoint file.
        trainer: the trainer to fill.
        state: the checkpoint as `read_checkpoint(path)` already read it (default: read it now).

    Raises:
        UserError: a damaged file, or a checkpoint of another model (an edited config.json).
    """
    torch = import_torch()
    state = read_checkpoint(path) if state is None else state
    if state is None:
        return 0  # killed before the first epoch ended: start again from the seed
    try:
        trainer.model.load_state_dict(state["model"])
    except RuntimeError:
        raise UserError(f"the checkpoint {path} does not fit this run's model; was its config.json edited? "
                        "Put it back as the run wrote it, or start a new run") from None
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.generator.set_state(state["rng"]["loader"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    trainer.history = state["history"]
    trainer.epoch_seconds = state["epoch_seconds"]
    return int(state["epochs_done"])


def load_torch_model(run_dir: Path, model_name: str, image_shape, num_classes: int):
    """The run's nn.Module with RUN/model.pt's weights, in eval mode, on the CPU (for `invoke export`)."""
    torch = import_torch()
    from classifier.lecture.torch_models import build_torch_model

    model = build_torch_model(model_name, tuple(image_shape), num_classes)
    model.load_state_dict(torch.load(Path(run_dir) / "model.pt", map_location="cpu", weights_only=True))
    return model.eval()


def export_torch_onnx(model, path: Path, example) -> None:
    """Write `model` to `path` as ONNX with `torch.onnx.export`, the batch size left free.

    Args:
        model: an nn.Module in eval mode.
        path: the .onnx file to write.
        example: one batch of channels-first float32 images (a NumPy array), traced to record the graph.
    """
    torch = import_torch()
    # dynamo=False: the TorchScript exporter. torch's default, the dynamo
    # exporter, needs the onnxscript package, which requirements/lab.lock does
    # not hold (onnx and onnxruntime are there); the TorchScript exporter needs
    # nothing more and converts the lecture's conv/pool/linear networks exactly.
    torch.onnx.export(model, (torch.from_numpy(example),), str(path), dynamo=False,
                      input_names=["images"], output_names=["outputs"],
                      dynamic_axes={"images": {0: "batch"}, "outputs": {0: "batch"}})


@contextlib.contextmanager
def torch_group(config: Config):
    """This process's torch_distribute.Group for a multi-worker run, left at the end; None for one process."""
    if config.strategy != "multiworker":
        yield None
        return
    from classifier.machinery.torch_distribute import join_group, leave_group

    group = join_group(config)
    try:
        yield group
    finally:
        leave_group()


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
    summaries = epoch_scalars(run.folder) if config.tensorboard else None

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


def epoch_scalars(run_dir: Path):
    """`tensorboard_events.EpochScalars` for the run, or None with a warning where TensorBoard is not installed.

    A PyTorch-only environment (requirements/torch-gpu.lock alone) has no
    tensorboard package; the run goes on without event files, as it goes on
    without model.png where Graphviz is missing. (Here rather than in
    tensorboard_events.py, which imports tensorboard as it loads.)
    """
    try:
        from classifier.machinery.tensorboard_events import EpochScalars
    except ImportError as error:
        print(f"warning: TensorBoard event files skipped: {error} "
              "(the tensorboard package comes with requirements/lab.lock)")
        return None
    return EpochScalars(run_dir)
