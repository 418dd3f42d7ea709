"""TensorBoard event files written without TensorFlow: the run folder's layout, the run-level summaries, torch's curves.

    invoke train --trainer torch --dataset fashion_mnist --epochs 3
    tensorboard --logdir runs

`classifier/machinery/tensorboard.py` (the Keras callback) and the PyTorch trainer
write the same folders and tags, so fit, tape and torch runs overlay in the
Scalars dashboard and line up in the HParams table:

| folder | what |
|---|---|
| `RUN/tensorboard/train/` | `epoch_loss`, `epoch_accuracy`, `epoch_learning_rate`, step = epoch index |
| `RUN/tensorboard/validation/` | `epoch_loss`, `epoch_accuracy` |
| `RUN/tensorboard/` | the HParams, `test/loss`, `test/accuracy`, the run's pictures as images (`write_run_summaries`) |

Why not `torch.utils.tensorboard.SummaryWriter`: importing it imports
TensorFlow wherever TensorFlow is installed (its `_embedding` module asks
`tensorboard.compat.tf` for `tf.io.gfile`, and TensorBoard's own
`EventFileWriter` does the same), which cost the torch trainer seconds and
TensorFlow's memory for nothing. This module builds the same protocol
buffers with TensorBoard's TF-free helpers (`scalar_pb`, `hparams_pb`) and
frames them with its `RecordWriter` into an ordinary file. The PyTorch
model's graph is left out for the same reason: torch's graph export lives in
`torch.utils.tensorboard` and traces a forward pass; `model.txt` shows the
module instead.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from pathlib import Path

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams.summary_v2 import hparams_pb
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar.summary_v2 import scalar_pb
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboard.util import tensor_util

LOG_DIR = "tensorboard"
# The run's knobs shown in the HParams dashboard (the rest of the config says where files go).
HPARAMS = ("dataset", "model", "trainer", "recipe", "strategy", "epochs", "batch_size", "learning_rate",
           "val_split", "limit", "seed")
PICTURES = ("samples", "confusion_matrix", "learning_curves")

# Two event files opened by one process in the same second still get two names.
_file_numbers = itertools.count()


def log_dir(run_dir: Path) -> Path:
    """The run's TensorBoard folder."""
    return Path(run_dir) / LOG_DIR


class EventFile:
    """One TensorBoard event file: Event protocol buffers in TFRecord frames, appended and flushed.

    Like TensorFlow's own writer, it appends to its final name rather than
    renaming a finished file: TensorBoard reads event files while they grow,
    and it skips a last record that a killed run left half-written.

    Args:
        folder: the folder TensorBoard shows as one run (created if missing).
    """

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        # TensorBoard lists the files whose name holds "tfevents"; this is the name TensorFlow gives them.
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_file_numbers)}"
        self.path = folder / name
        self._file = open(self.path, "wb")  # noqa: SIM115 - open for the run's whole training; close() closes it
        self._records = RecordWriter(self._file)
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def add(self, step: int, *summaries: summary_pb2.Summary) -> None:
        """Append the summaries' values as one event at `step`."""
        event = event_pb2.Event(wall_time=time.time(), step=step)
        for summary in summaries:
            event.summary.value.extend(summary.value)
        self._write(event)

    def _write(self, event: event_pb2.Event) -> None:
        self._records.write(event.SerializeToString())

    def flush(self) -> None:
        self._records.flush()

    def close(self) -> None:
        self._records.close()


class EpochScalars:
    """Per-epoch curves under Keras' tags, for a trainer without Keras (the PyTorch loop).

        summaries = EpochScalars(run_dir)
        summaries.write(epoch, {"loss": ..., "accuracy": ..., "val_loss": ..., "val_accuracy": ...}, learning_rate)

    Only floats the trainer already has are written: nothing touches the
    model, its weights or a random generator, so a run with TensorBoard is
    bit-identical to one without.
    """

    def __init__(self, run_dir: Path):
        start = time.perf_counter()
        self.train = EventFile(log_dir(run_dir) / "train")
        self.validation = EventFile(log_dir(run_dir) / "validation")
        # Time spent here, so that every run's timings.json shows what TensorBoard cost it.
        self.seconds = time.perf_counter() - start

    def write(self, epoch: int, logs: dict, learning_rate: float) -> None:
        """Write one epoch's loss and accuracy (train and `val_`), and the learning rate, at step `epoch`."""
        start = time.perf_counter()
        self.train.add(epoch, *(scalar_pb(f"epoch_{key}", float(logs[key])) for key in ("loss", "accuracy")),
                       scalar_pb("epoch_learning_rate", float(learning_rate)))
        self.validation.add(epoch, *(scalar_pb(f"epoch_{key}", float(logs[f"val_{key}"]))
                                     for key in ("loss", "accuracy")))
        # Flushed every epoch: TensorBoard shows a long run while it trains.
        self.train.flush()
        self.validation.flush()
        self.seconds += time.perf_counter() - start

    def close(self) -> None:
        self.train.close()
        self.validation.close()


def write_run_summaries(run_dir: Path, config: dict, metrics: dict, epochs_done: int) -> Path:
    """After evaluation: the hyperparameters with the test metrics, and the run's pictures as images.

    Both frameworks' runs end here (it needs neither TensorFlow nor PyTorch).

    Args:
        run_dir: the run folder (its samples.png, confusion_matrix.png and learning_curves.png are read if present).
        config: the resolved config as written to config.json.
        metrics: what metrics.json holds (test loss and accuracy).
        epochs_done: the step the test metrics and images are logged at.

    Returns:
        The TensorBoard folder.
    """
    root = log_dir(run_dir)
    events = EventFile(root)
    values = {key: _hparam_value(config.get(key)) for key in HPARAMS}
    events.add(epochs_done, hparams_pb(values, trial_id=Path(run_dir).name),
               scalar_pb("test/loss", float(metrics["loss"])), scalar_pb("test/accuracy", float(metrics["accuracy"])))
    for name in PICTURES:
        picture = Path(run_dir) / f"{name}.png"
        if picture.is_file():
            events.add(epochs_done, _image_pb(name, picture.read_bytes()))
    events.close()
    return root


def _image_pb(tag: str, png: bytes) -> summary_pb2.Summary:
    """An image summary as `tf.summary.image` writes it: [width, height, PNG bytes], the PNG kept as it is."""
    # A PNG's IHDR chunk starts at byte 16: width, then height, big-endian.
    width, height = struct.unpack(">II", png[16:24])
    tensor = tensor_util.make_tensor_proto([str(width).encode(), str(height).encode(), png])
    summary = summary_pb2.Summary()
    summary.value.add(tag=tag, tensor=tensor,
                      metadata=image_metadata.create_summary_metadata(display_name=None, description=None))
    return summary


def _hparam_value(value):
    # The HParams plugin takes bool, number or string; an absent --limit means "all".
    return "all" if value is None else value
