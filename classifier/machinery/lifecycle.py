"""One run folder from its claim to its finish, written once for every trainer (fit, tape, torch).

    run = Run.claim(config, resume_dir)                # a new folder with config.json, or the stopped one
    run.start(running_manifest(...))                   # manifest.json, status "running"
    with run.training(epochs_done):                    # Ctrl-C: status "interrupted", one line, exit 130
        trainer.train(...)
    run.finish(history, metrics, timings, class_names, weights_sha256, tensorboard=True)

A folder is claimed only after the data has loaded, so a failed download or a
--limit that does not fit leaves no run folder behind. The workers of a
multi-worker run other than the chief (chief=False) write the same files into
a scratch folder that `finish` deletes.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

from classifier import config as config_module
from classifier.config import Config, Interrupted, to_dict
from classifier.machinery.files import write_json
from classifier.machinery.runs import create_run_dir, finish_run


class Run:
    """A run folder in use: where it is, its manifest, and whether this process is the one that keeps it."""

    def __init__(self, folder: Path, config: Config, resumed: Path | None = None, chief: bool = True):
        self.folder = folder
        self.config = config
        self.resumed = resumed  # the stopped run folder being continued, or None
        self.chief = chief
        self.manifest: dict = {}

    @classmethod
    def claim(cls, config: Config, resume_dir: Path | None = None, chief: bool = True) -> Run:
        """A new run folder holding config.json, the stopped `resume_dir`, or (chief=False) a scratch folder."""
        if not chief:
            folder = Path(tempfile.mkdtemp(prefix="worker-run-"))
        elif resume_dir:
            folder = resume_dir
        else:
            folder = create_run_dir(config_module.runs_dir(config), config)
            write_json(folder / "config.json", to_dict(config))
        print(f"Run folder: {folder}" if chief else f"Scratch folder of this worker: {folder}")
        return cls(folder, config, resume_dir, chief)

    @property
    def home(self) -> Path:
        """The folder a person continues or reads: the stopped run when resuming, else this one."""
        return self.resumed or self.folder

    @property
    def checkpoint_folder(self) -> Path:
        return self.home / "checkpoint"

    def start(self, manifest: dict) -> None:
        """Write the running manifest; later changes to `self.manifest` are written by `stopped` and `finish`."""
        self.manifest = manifest
        write_json(self.folder / "manifest.json", manifest)

    def stopped(self) -> None:
        """Mark the run interrupted: its checkpoint keeps the last finished epoch for --resume."""
        self.manifest["status"] = "interrupted"
        write_json(self.folder / "manifest.json", self.manifest)

    @contextlib.contextmanager
    def training(self, epochs_done):
        """Around the training loop: Ctrl-C marks the run interrupted and says how to continue it.

        Args:
            epochs_done: a callable giving the number of finished epochs when training stops.
        """
        try:
            yield self
        except KeyboardInterrupt:
            self.stopped()
            raise Interrupted(f"stopped after {epochs_done()}/{self.config.epochs} epoch(s); "
                              f"continue with: invoke train --resume {self.folder}") from None

    def finish(self, history: dict, metrics: dict, timings: dict, class_names, weights_sha256: str,
               tensorboard: bool) -> Path:
        """Write the finished run's evidence (runs.finish_run) and the TensorBoard run summaries; returns `home`.

        The model itself is saved by the caller first, in its framework's format
        (runs.save_keras_model, torch_runs.save_torch_model), which gives `weights_sha256`.
        """
        finish_run(self.folder, history, metrics, timings, self.manifest, class_names, weights_sha256)
        if not self.chief:
            shutil.rmtree(self.folder, ignore_errors=True)
            return self.home
        if tensorboard:
            from classifier.machinery.tensorboard_events import write_run_summaries

            write_run_summaries(self.folder, to_dict(self.config), metrics, self.config.epochs)
            print(f"TensorBoard: tensorboard --logdir {self.folder.parent}")
        print(f"Run folder: {self.folder}")
        return self.folder


def timings(seconds: dict, epoch_seconds: list[float], start_epoch: int, num_images: int,
            tensorboard_seconds: float | None) -> dict:
    """timings.json: the load/train/evaluate seconds, every epoch's, and images per second over this call's epochs.

    Args:
        seconds: {"load": ..., "train": ..., "evaluate": ...} seconds spent.
        epoch_seconds: every finished epoch's seconds (a resumed run's earlier ones too).
        start_epoch: the epochs finished before this call (their seconds are not counted in the rate).
        num_images: training images per epoch.
        tensorboard_seconds: seconds of train_seconds spent writing TensorBoard summaries (None: none written).
    """
    ran = epoch_seconds[start_epoch:]
    return {
        "load_seconds": seconds["load"],
        "train_seconds": seconds["train"],
        "evaluate_seconds": seconds["evaluate"],
        "epoch_seconds": epoch_seconds,
        "train_images_per_second": num_images * len(ran) / sum(ran) if ran else None,
        "tensorboard_seconds": tensorboard_seconds,
    }


def print_metrics(metrics: dict) -> None:
    print(f"test loss {metrics['loss']:.4f}, test accuracy {metrics['accuracy']:.4f}, "
          f"argmax accuracy {metrics['argmax_accuracy']:.4f}, "
          f"probabilities sum to 1: {metrics['probabilities_sum_to_one']}")
