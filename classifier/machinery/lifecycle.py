"""One run folder from its claim to its finish, written once for every trainer (fit, tape, torch).

    run = Run.claim(config, resume_dir)                # a new folder with config.json, or the stopped one
    run.start(running_manifest(...))                   # manifest.json, status "running"
    with run.interruptible(epochs_done):               # Ctrl-C or a full disk in any phase: "interrupted", one line
        ... build, train, test ...
        run.finish(history, metrics, timings, class_names, weights_sha256, tensorboard=True)

A folder is claimed only after the data has loaded, so a failed download or a
--limit that does not fit leaves no run folder behind. The claim takes the
folder's lock (runs.lock_run): a second `--resume` of a run still in training
is refused, and the lock goes with the run's end, Ctrl-C included. The workers
of a multi-worker run other than the chief (chief=False) write the same files
into a scratch folder that `finish`, Ctrl-C or a lost launcher deletes.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from classifier import config as config_module
from classifier.config import Config, Interrupted, to_dict
from classifier.machinery.files import DiskFull, disk_full, read_json, write_json
from classifier.machinery.runs import create_run_dir, finish_run, lock_run, resume_command, unlock_run

# The runs this process holds (claimed, not yet released), for stop_when_parent_exits.
_IN_USE: list[Run] = []


class Run:
    """A run folder in use: where it is, its manifest, and whether this process is the one that keeps it."""

    def __init__(self, folder: Path, config: Config, resumed: Path | None = None, chief: bool = True):
        self.folder = folder
        self.config = config
        self.resumed = resumed  # the stopped run folder being continued, or None
        self.chief = chief
        self.manifest: dict = {}
        self.lock: Path | None = None  # RUN/.lock while this process holds the run folder

    def release(self) -> None:
        """Give the run folder back: remove its lock (runs.unlock_run); a stopped worker's scratch folder goes too."""
        if self.lock is not None:
            unlock_run(self.lock)
            self.lock = None
        if not self.chief and self.manifest.get("status") != "complete":
            shutil.rmtree(self.folder, ignore_errors=True)
        if self in _IN_USE:
            _IN_USE.remove(self)

    @classmethod
    def claim(cls, config: Config, resume_dir: Path | None = None, chief: bool = True) -> Run:
        """A new run folder holding config.json, the stopped `resume_dir`, or (chief=False) a scratch folder."""
        lock = None
        if not chief:
            folder = Path(tempfile.mkdtemp(prefix="worker-run-"))
        elif resume_dir:
            folder = resume_dir
            lock = lock_run(folder)  # refused while another live process trains it
        else:
            folder = create_run_dir(config_module.runs_dir(config), config)
            lock = lock_run(folder)
            write_json(folder / "config.json", to_dict(config))
        print(f"Run folder: {folder}" if chief else f"Scratch folder of this worker: {folder}")
        run = cls(folder, config, resume_dir, chief)
        run.lock = lock
        _IN_USE.append(run)
        return run

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
        """Mark the run interrupted (unless it finished): its checkpoint keeps the last finished epoch for --resume."""
        if self.manifest.get("status") == "complete":
            return
        self.manifest["status"] = "interrupted"
        try:
            write_json(self.folder / "manifest.json", self.manifest)
        except DiskFull:
            pass  # The manifest keeps "running"; the caller's line still says what happened and what to do.

    @contextlib.contextmanager
    def interruptible(self, epochs_done):
        """Ctrl-C or a full disk inside (setup, an epoch, evaluation, writing): mark the run, say how to continue.

        The one line names the --resume command whatever phase the run was in:
        the checkpoint holds the last finished epoch, and every file is
        written under a temporary name first, so nothing half-written is left
        (files.atomic_write, checkpoints.py). A run that had finished is left as it is.

        Args:
            epochs_done: called after the stop for the epochs the checkpoint holds (None: not known).

        Raises:
            Interrupted: after Ctrl-C.
            DiskFull: the disk filled up; its message names the file.
        """
        ctrl_c = CtrlC()
        try:
            with ctrl_c_that_sticks(ctrl_c):
                yield self
        except (KeyboardInterrupt, Exception) as error:
            # After Ctrl-C any error is the Ctrl-C: it may land in code (TensorFlow tracing a function)
            # that turns the KeyboardInterrupt into an error of its own.
            interrupted = ctrl_c.pressed or isinstance(error, KeyboardInterrupt)
            full = None if interrupted else disk_full(error)
            if (full is None and not interrupted) or self.manifest.get("status") == "complete":
                raise
            self.stopped()
            done = epochs_done()
            stopped = f"stopped after {done}/{self.config.epochs} epoch(s)" if done is not None else "stopped"
            resume = resume_command(self.folder)
            if full is not None:
                raise DiskFull(full.path, f"{stopped}; free some space, then continue with: {resume}") from None
            raise Interrupted(f"{stopped}; continue with: {resume}") from None
        finally:
            self.release()

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
            print(f"TensorBoard: tensorboard --logdir {shlex.quote(str(self.folder.parent))}")
        print(f"Run folder: {self.folder}")
        return self.folder


# How soon Ctrl-C is raised again after Python dropped it (below).
CTRL_C_REPEAT_SECONDS = 0.05


class CtrlC:
    """What ctrl_c_that_sticks saw: `pressed` once Ctrl-C (SIGINT) arrived inside its block."""

    def __init__(self):
        self.pressed = False


@contextlib.contextmanager
def ctrl_c_that_sticks(state: CtrlC | None = None):
    """Inside: Ctrl-C raises KeyboardInterrupt, and again every CTRL_C_REPEAT_SECONDS until it leaves the block.

    Python raises KeyboardInterrupt in whatever code runs when the signal
    arrives; inside a weakref callback or a __del__ (PyTorch's and Keras' own
    clean-up run there) it prints "Exception ignored in ..." and drops it, and
    the run went on to the end as if no one had pressed Ctrl-C. Raising it
    again until it leaves this block means one Ctrl-C always stops the run,
    and the dropped one is not printed (the run's one line says what happened).
    The repeat is a thread calling _thread.interrupt_main, which every system
    has (no SIGALRM, which Windows lacks). Only the main thread may set signal
    handlers; elsewhere nothing changes.

    Args:
        state: a CtrlC whose `pressed` is set when Ctrl-C arrives (for the caller's handling afterwards).
    """
    state = state or CtrlC()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    leaving = threading.Event()
    repeater = threading.Thread(target=_repeat_ctrl_c, args=(leaving,), daemon=True)

    def interrupt(signum, frame):
        if leaving.is_set():
            return  # a repeat that arrives while the block is left: the first one is already on its way out
        if not state.pressed:
            state.pressed = True
            repeater.start()
        raise KeyboardInterrupt

    def quiet_about_dropped_ctrl_c(unraisable):
        # Python would print the dropped one as "Exception ignored in ... Traceback"; the repeat stops the run.
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            previous_hook(unraisable)

    previous = signal.signal(signal.SIGINT, interrupt)
    previous_hook, sys.unraisablehook = sys.unraisablehook, quiet_about_dropped_ctrl_c
    try:
        yield state
    finally:
        leaving.set()  # first: no repeat may land in the caller's handling of this one
        if repeater.is_alive():
            repeater.join()
        _handle_pending_signals()
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = previous_hook


def _repeat_ctrl_c(leaving: threading.Event) -> None:
    while not leaving.wait(CTRL_C_REPEAT_SECONDS):
        _thread.interrupt_main(signal.SIGINT)


def _handle_pending_signals() -> None:
    """Empty on purpose: entering a Python function makes the interpreter run the handler of a repeat
    that the thread sent just before it was joined, while `interrupt` still ignores it."""


# After the launcher of a multi-worker run is gone, how long a worker gets to stop as Ctrl-C stops it.
PARENT_GONE_GRACE_SECONDS = 5.0


def stop_when_parent_exits(pipe: int) -> threading.Thread:
    """Stop this process as Ctrl-C would when the pipe `pipe` (a file descriptor) ends: the parent holds its other end.

    A parent killed with SIGKILL cannot stop its children; its end of the
    pipe closes with it, so the child reads end-of-file at once (on every
    system). The child's output then goes nowhere (the parent read it), so it
    is sent to the null device; Ctrl-C marks the run interrupted and gives its
    lock and scratch folder back. A worker stuck in a collective operation
    whose partner is gone does not come back to Python: after
    PARENT_GONE_GRACE_SECONDS its runs are released from this thread and the
    process ends. Returns the watching thread.

    The descriptor is read with os.read, not through sys.stdin: a daemon
    thread blocked inside a buffered reader holds its lock, and Python's
    shutdown then stops with "could not acquire lock for <stdin>".
    """
    def watch():
        with contextlib.suppress(OSError):
            while os.read(pipe, 4096):  # the parent never writes: this returns b"" when it is gone
                pass
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)  # standard output and error, which went to the parent
        os.dup2(null, 2)
        _thread.interrupt_main(signal.SIGINT)
        time.sleep(PARENT_GONE_GRACE_SECONDS)
        for run in list(_IN_USE):
            run.stopped()
            run.release()
        os._exit(130)

    watcher = threading.Thread(target=watch, name="parent-watch", daemon=True)
    watcher.start()
    return watcher


def epochs_saved(checkpoint_folder: Path) -> int:
    """The epochs a TensorFlow run's checkpoint holds (its state.json), 0 when there is none yet."""
    try:
        return int(read_json(Path(checkpoint_folder) / "state.json")["epochs_done"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


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
