"""Resume: the last finished epoch of a run, kept with TensorFlow's checkpoint machinery.

    checkpoints = Checkpoints(run_dir / "checkpoint", model, optimizer)
    epochs_done = checkpoints.restore(readable_state(run_dir / "checkpoint"))   # 0 for a new run
    trainer = FitTrainer(..., callbacks=[checkpoints])
    trainer.train(train, val, initial_epoch=epochs_done)

After every epoch `tf.train.CheckpointManager` saves every model variable
(the weights, and the random-number states of Dropout and RandomFlip) and the
optimizer's (its step count and slots); `state.json` beside it names that
checkpoint and holds the run's history so far. The state file is written
last and atomically, and the previous checkpoint is kept, so a kill at any
moment leaves a state file that names complete files. A resumed run reads
them back and continues as if it had never stopped: the same weights, bit
for bit (tests/test_resume.py).

In a multi-worker run every worker saves (saving may add up values across
workers, so all must take part), but only the chief into the run folder;
the others write to a scratch folder that is deleted (`chief=False`), and
read the chief's checkpoint when resuming.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import tensorflow as tf
from tensorflow import keras

from classifier.config import UserError
from classifier.machinery.files import DiskFull, read_json, write_json

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


def readable_state(folder: Path) -> dict | None:
    """What a resumed run restores: state.json, pointing at the newest checkpoint that reads back whole.

    The last two checkpoints are kept, so a damaged last one (a truncated
    `ckpt-N.data-*` or `.index`) falls back to the one before, with the history
    cut to its epochs. Called before the run folder is touched.

    Returns:
        The state, or None when the run stopped before its first checkpoint.

    Raises:
        UserError: state.json is damaged, or no kept checkpoint reads back.
    """
    state_path = Path(folder) / "state.json"
    if not state_path.is_file():
        return None
    start_over = f"start a new run with the settings in {Path(folder).parent / 'config.json'}"
    try:
        state = read_json(state_path)
        done = int(state["epochs_done"])
        history = {key: list(state["history"][key][:done]) for key in HISTORY_KEYS}
        epoch_seconds = list(state["epoch_seconds"][:done])
    except (ValueError, KeyError, TypeError, IndexError):
        raise UserError(f"{state_path} is damaged, so this run cannot continue; {start_over}") from None
    for number in range(done, max(0, done - 2), -1):
        if _reads_back(Path(folder) / f"ckpt-{number}"):
            if number < done:
                print(f"warning: checkpoint ckpt-{done} in {folder} is damaged; resuming from ckpt-{number} "
                      f"(epoch {number}) instead")
            return {"epochs_done": number, "checkpoint": f"ckpt-{number}",
                    "history": {key: values[:number] for key, values in history.items()},
                    "epoch_seconds": epoch_seconds[:number]}
    raise UserError(f"the checkpoint ckpt-{done} in {folder} is damaged and no earlier one is kept, so this run "
                    f"cannot continue; {start_over}")


def _reads_back(prefix: Path) -> bool:
    """Whether every tensor of the checkpoint at `prefix` reads back (its index and data files are whole)."""
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception:  # noqa: BLE001 - a short file surfaces as OpError, ValueError or IndexError ("Read less bytes")
        return False
    return True


class Checkpoints(keras.callbacks.Callback):
    """A Keras callback that saves a checkpoint after every epoch and keeps the run's history."""

    def __init__(self, folder: Path, model: keras.Model, optimizer: keras.optimizers.Optimizer, chief: bool = True):
        super().__init__()
        self.folder = Path(folder)
        self.chief = chief
        # The folder this process saves into: the run's, or a worker's scratch copy.
        self._save_folder = self.folder if chief else Path(tempfile.mkdtemp(prefix="worker-checkpoint-"))
        self._model, self._optimizer = model, optimizer
        # model.variables rather than model=model: Keras 3 models do not hand
        # the Dropout and RandomFlip seed states to tf.train.Checkpoint, and
        # without them a resumed epoch would drop other units.
        self._checkpoint = tf.train.Checkpoint(variables=list(model.variables), optimizer=optimizer)
        self._manager = tf.train.CheckpointManager(self._checkpoint, str(self._save_folder), max_to_keep=2)
        self.history: dict[str, list[float]] = {key: [] for key in HISTORY_KEYS}
        self.epoch_seconds: list[float] = []
        self._epoch_start = 0.0

    def restore(self, state: dict | None) -> int:
        """Load the checkpoint `state` names (from `readable_state`); returns the number of epochs done.

        Raises:
            UserError: the checkpoint does not fit this model (its config.json was edited).
        """
        if state is None:
            return 0  # Stopped before the first epoch ended: start again from the seed.
        # Optimizer variables exist only once built; build them so the checkpoint can fill them.
        self._optimizer.build(self._model.trainable_variables)
        try:
            self._checkpoint.restore(str(self.folder / state["checkpoint"])).assert_consumed()
        except (AssertionError, ValueError, tf.errors.OpError):
            raise UserError(f"the checkpoint in {self.folder} does not fit this run's model; was its "
                            "config.json edited? Put it back as the run wrote it, or start a new run") from None
        self.history, self.epoch_seconds = state["history"], state["epoch_seconds"]
        return int(state["epochs_done"])

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(time.perf_counter() - self._epoch_start)
        for key in HISTORY_KEYS:
            self.history[key].append(float(logs[key]))
        path = self._save(epoch + 1)
        if not self.chief:
            return
        write_json(self.folder / "state.json", {
            "epochs_done": epoch + 1,
            "checkpoint": Path(path).name,
            "history": self.history,
            "epoch_seconds": self.epoch_seconds,
        })

    def _save(self, number: int) -> str:
        """Save checkpoint `number`; a full disk is a DiskFull, with the failed save's files removed.

        TensorFlow writes a checkpoint into ckpt-N_temp/ and renames it when
        complete; a write that fails for want of space (ResourceExhaustedError
        from SaveV2) leaves that folder behind. state.json still names the
        previous checkpoint, which CheckpointManager deletes only after a save succeeds.
        """
        try:
            return self._manager.save(checkpoint_number=number)
        except tf.errors.ResourceExhaustedError:
            for leftover in self._save_folder.glob(f"ckpt-{number}[._]*"):
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink(missing_ok=True)
            raise DiskFull(self._save_folder / f"ckpt-{number}") from None

    def close(self) -> None:
        """Delete a worker's scratch folder (the chief's checkpoints stay in the run folder)."""
        if not self.chief:
            shutil.rmtree(self._save_folder, ignore_errors=True)
