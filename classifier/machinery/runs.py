"""Run folders: one per training, never shared, holding the evidence of the run.

    runs/20261126-231502-fashion_mnist-sequential_add-fit/
        config.json  history.json  metrics.json  timings.json  manifest.json
        model.keras  samples.png  model.png  learning_curves.png  confusion_matrix.png
        checkpoint/  (the last finished epoch, for `invoke train --resume`)

Every file is written through files.atomic_write, so a run stopped at any
moment leaves no half-written file under a final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from classifier.machinery import numerics
from classifier.config import PROJECT_ROOT, Config, UserError, make_config, to_dict
from classifier.machinery.files import atomic_write, read_json, write_json

# Environment variables that change what TensorFlow computes or where (classifier/machinery/numerics.py).
NUMERICS_ENV = numerics.RECORDED

# The files a finished run is judged by (`invoke compare`, `reproduce`): its weights, as Keras or PyTorch
# saved them, and its test metrics. The manifest records their SHA-256 when the run finishes.
WEIGHTS_FILES = ("model.keras", "model.pt")
JUDGED_FILES = (*WEIGHTS_FILES, "metrics.json")


def create_run_dir(runs_root: Path, config: Config) -> Path:
    """Make a new, empty run folder; two runs started in the same second get two folders."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}-{config.dataset}-{config.model}-{config.trainer}"
    try:
        runs_root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"runs folder {runs_root} cannot be created: {error.strerror}") from None
    for attempt in range(1, 1000):
        path = runs_root / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            path.mkdir()  # Fails if it exists: the atomic claim on the name.
            return path
        except FileExistsError:
            continue
        except OSError as error:
            raise UserError(f"runs folder {runs_root} cannot be written: {error.strerror}") from None
    raise UserError(f"runs folder {runs_root} already holds 999 runs named {base}*")


def read_run_files(run_dir: Path) -> tuple[dict, dict | None]:
    """A run folder's config.json and manifest.json (None when there is none), checked before anything changes.

    `train --resume`, `export` and `reproduce` read these first, so that a
    file damaged or edited by hand is refused in one line while the folder is
    still as it was.

    Raises:
        UserError: no config.json; a file that is not the JSON object the lab
            wrote; or config.json and the manifest's copy of it differ.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.json in it)")
    config = read_object(run_dir / "config.json")
    manifest = read_object(run_dir / "manifest.json") if (run_dir / "manifest.json").is_file() else None
    if manifest is not None and "config" in manifest and manifest["config"] != config:
        keys = sorted(key for key in {*config, *manifest["config"]} if config.get(key) != manifest["config"].get(key))
        differences = ", ".join(f"{key} {config.get(key)!r} against {manifest['config'].get(key)!r}" for key in keys)
        raise UserError(f"{run_dir}: config.json and manifest.json disagree ({differences}), so one was edited; "
                        "put it back as the run wrote it, or start a new run")
    return config, manifest


def read_object(path: Path) -> dict:
    """The JSON object in `path`; a file that is not one is a UserError saying it is damaged."""
    try:
        data = read_json(path)
    except ValueError as error:
        raise UserError(f"{path} is damaged (not JSON: {getattr(error, 'msg', error)}); "
                        "put back the file the run wrote, or start a new run") from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is damaged (not the JSON object the lab writes); "
                        "put back the file the run wrote, or start a new run")
    return data


def environment_record(tensorflow: bool = True) -> dict:
    """What a rerun needs to know about this machine and software to expect the same numbers.

    Args:
        tensorflow: include TensorFlow's version, build and devices (the torch
            trainer leaves it out, so that it runs where TensorFlow is not installed).
    """
    record = {
        "git": _git_state(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "numerics_env": {key: os.environ.get(key) for key in NUMERICS_ENV},
        # The image's tag (docker/Dockerfile), or the REPOSITORY@sha256:... that compose ran (LAB_IMAGE).
        "container_image": os.environ.get("LAB_IMAGE") or None,
        "packages": {dist.metadata["Name"]: dist.version for dist in metadata.distributions()},
    }
    if tensorflow:
        import tensorflow as tf

        record["tensorflow"] = tf.__version__
        record["tensorflow_build"] = {key: str(value) for key, value in tf.sysconfig.get_build_info().items()}
        record["devices"] = [device.name for device in tf.config.list_physical_devices()]
    return record


def _git_state() -> dict:
    def git(*args):
        # A first `git status` after a clone refreshes the index, which on a busy laptop takes more than seconds.
        result = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, encoding="utf-8",
                                errors="replace", timeout=60)
        return result.stdout.strip() if result.returncode == 0 else None

    try:
        commit = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (platform's answer elsewhere), for manifests and benchmarks."""
    return numerics.cpuinfo_fields().get("model name") or platform.processor() or platform.machine()


def weights_hash(model) -> str:
    """SHA-256 over every weight's bytes, in order: equal hashes mean bit-identical models."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


def running_manifest(config: Config, dataset, splits, hashes: dict, **extra) -> dict:
    """A run's manifest as it starts: status, seed, config, the data's hashes and sizes, plus `extra` entries."""
    train, val, test = splits
    return {
        "status": "running",
        "seed": config.seed,
        "config": to_dict(config),
        "data": {"dataset": dataset.name, "sha256": hashes, "train": len(train), "validation": len(val),
                 "test": len(test)},
        **extra,
    }


def finish_run(run_dir: Path, history: dict, metrics: dict, timings: dict, manifest: dict, class_names,
               weights_sha256: str) -> None:
    """Write a finished run's evidence beside its saved model: history, metrics, timings, pictures, manifest (last).

    Both frameworks end here: the caller saves the model in its own format
    first (save_keras_model, or torch_run's model.pt).

    Args:
        run_dir: the run folder (config.json and a running manifest are already there).
        history: per-epoch loss, accuracy, val_loss, val_accuracy (and epoch_seconds).
        metrics: what the evaluation returned.
        timings: seconds spent, for timings.json.
        manifest: the run's manifest; gets status "complete" and the weights hash.
        class_names: the dataset's class names, in label order.
        weights_sha256: the final weights' hash (weights_hash for Keras).
    """
    from classifier.machinery import report

    write_json(run_dir / "history.json", history)
    write_json(run_dir / "metrics.json", {**metrics, "class_names": list(class_names)})
    write_json(run_dir / "timings.json", timings)
    report.learning_curves(history, run_dir / "learning_curves.png")
    report.confusion_matrix_plot(metrics["confusion_matrix"], class_names, run_dir / "confusion_matrix.png")
    manifest.update(status="complete", weights_sha256=weights_sha256, files_sha256=files_record(run_dir))
    write_json(run_dir / "manifest.json", manifest)


def file_sha256(path: Path) -> str:
    """The SHA-256 of the file's bytes."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def files_record(run_dir: Path) -> dict:
    """{name: SHA-256} of the run's JUDGED_FILES that are there, for the finished manifest."""
    return {name: file_sha256(run_dir / name) for name in JUDGED_FILES if (run_dir / name).is_file()}


def verify_run_files(run_dir: Path, manifest: dict) -> bool:
    """Check a finished run's weights file and metrics.json against the SHA-256 its manifest recorded.

    The weights hash in the manifest is taken over the weights as the
    framework holds them, so only the files' own hashes show that the files
    beside it are still the ones the run wrote.

    Returns:
        True when every recorded file is as the run wrote it; False for a run
        whose manifest records no file hashes (finished before the lab recorded them).

    Raises:
        UserError: a recorded file is missing or is not the one the run wrote
            (the run folder was altered), or no weights file is there at all.
    """
    run_dir = Path(run_dir)
    recorded = manifest.get("files_sha256")
    if recorded is None:
        if not any((run_dir / name).is_file() for name in WEIGHTS_FILES):
            raise UserError(f"{run_dir} is damaged: it holds no {' or '.join(WEIGHTS_FILES)}; train it again")
        return False
    if not isinstance(recorded, dict) or not any(name in recorded for name in WEIGHTS_FILES):
        raise UserError(f"{run_dir / 'manifest.json'} is damaged (files_sha256 is not the record the lab writes); "
                        "put back the file the run wrote, or train it again")
    for name in (name for name in JUDGED_FILES if name in recorded):
        path = run_dir / name
        if not path.is_file():
            raise UserError(f"{path} is missing: the run folder was altered; put back the file the run wrote, "
                            "or train it again")
        if file_sha256(path) != recorded[name]:
            raise UserError(f"{path} is not the file the run wrote (its SHA-256 is not the one manifest.json "
                            "records): the run folder was altered; put back the file the run wrote, "
                            "or train it again")
    return True


def save_keras_model(run_dir: Path, model) -> str:
    """Save a Keras model as RUN/model.keras; returns its weights' hash for finish_run."""
    with atomic_write(run_dir / "model.keras") as temporary:
        model.save(temporary)
    return weights_hash(model)


def resume_target(run_dir: Path, check_lock: bool = True) -> tuple[Path, Config]:
    """The stopped run folder `--resume` names, and its own config (from its config.json).

    Args:
        run_dir: the folder given to --resume.
        check_lock: refuse a run that a live process is training (RUN/.lock); the
            workers of a multi-worker run leave it to their launcher and chief.

    A run whose manifest says "complete" but whose metrics.json is missing
    (deleted, or lost with a copy) is taken too when its checkpoint is there:
    resuming evaluates the saved epochs again and writes the evidence anew.

    Raises:
        UserError: the folder is not a run folder, its run has already finished, another
            process is training it (its lock), or its config.json or manifest.json is
            damaged or was edited (read_run_files).
    """
    if not (run_dir / "config.json").is_file():
        raise UserError(f"--resume {run_dir} is not a run folder (no config.json in it)")
    config, manifest = read_run_files(run_dir)
    if manifest is not None and manifest.get("status") == "complete":
        if (run_dir / "metrics.json").is_file():
            raise UserError(f"--resume {run_dir} has already finished; start a new run instead")
        if not (run_dir / "checkpoint").is_dir():
            raise UserError(f"--resume {run_dir} has no metrics.json and no checkpoint to evaluate again; "
                            f"start a new run with the settings in {run_dir / 'config.json'}")
    if check_lock:
        check_not_in_use(run_dir)
    try:
        return run_dir, make_config(**config)
    except UserError as error:
        raise UserError(f"{run_dir / 'config.json'} was changed by hand: {error}; put it back as the run wrote it, "
                        "or start a new run") from None


def resume_command(run_dir: Path, workers: int | str | None = None) -> str:
    """The command that continues `run_dir`, shell-quoted so that it pastes as one (a path may hold spaces)."""
    command = f"invoke train --resume {shlex.quote(str(run_dir))}"
    return f"{command} --workers {workers}" if workers else command


def resume_hint(run_dir: Path) -> str:
    """What to do with a run folder that did not finish: the --resume command when resume_target takes it.

    For `compare`, `export` and the like, so that the advice they print is the
    one `invoke train --resume` then follows rather than refuses.
    """
    try:
        _, config = resume_target(Path(run_dir))
    except UserError as error:
        return f"it cannot be resumed: {error}"
    if config.strategy != "multiworker":
        return f"finish it with: {resume_command(run_dir)}"
    _, manifest = read_run_files(Path(run_dir))
    return f"finish it with: {resume_command(run_dir, (manifest or {}).get('replicas') or 'N')}"


# A run folder in training holds this file: the training's process, so that a second writer is refused.
LOCK_FILE = ".lock"
# A lock file younger than this that cannot be read is being written; an older one was cut short by a kill.
LOCK_WRITE_SECONDS = 10.0


def lock_run(run_dir: Path) -> Path:
    """Take `run_dir` for this process: create RUN/.lock (O_EXCL) holding its pid, start time and host.

    A lock left by a process that is gone (killed with SIGKILL, a machine
    that restarted) is taken over; one held by a live process is refused.
    Returns the lock file, for unlock_run.

    Raises:
        UserError: another live process holds the run (one line naming the run and its pid).
    """
    path = Path(run_dir) / LOCK_FILE
    record = json.dumps({"pid": os.getpid(), "started": _process_started(os.getpid()), "host": socket.gethostname()})
    for _ in range(3):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            check_not_in_use(run_dir)
            path.unlink(missing_ok=True)  # a dead process's lock; the O_EXCL create decides who takes it
            continue
        except OSError as error:
            raise UserError(f"cannot write {path}: {error.strerror}") from None
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(record)
        return path
    raise UserError(f"{run_dir} is being taken by another process at this moment; try again")


def unlock_run(lock: Path) -> None:
    """Give the run folder back (remove the lock file lock_run made), if this process still holds it."""
    with contextlib.suppress(OSError, ValueError):
        if read_json(lock).get("pid") == os.getpid():
            lock.unlink()


def check_not_in_use(run_dir: Path) -> None:
    """Refuse a run folder that a live process is training (its RUN/.lock); a dead process's lock is ignored.

    Raises:
        UserError: one line naming the run, the process and the way out.
    """
    path = Path(run_dir) / LOCK_FILE
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        pid, started, host = int(holder["pid"]), holder.get("started"), holder.get("host")
    except FileNotFoundError:
        return
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        # Empty or cut short: another process is writing it this moment, or one was killed while it wrote it.
        with contextlib.suppress(OSError):
            if time.time() - path.stat().st_mtime < LOCK_WRITE_SECONDS:
                raise UserError(f"{run_dir} is being taken by another process at this moment; try again") from None
        return
    if host not in (None, socket.gethostname()):
        raise UserError(f"{run_dir} is being trained by process {pid} on {host}; wait for it to finish or stop it, "
                        f"or if nothing trains there any more delete {path}")
    if pid != os.getpid() and _alive(pid, started):
        raise UserError(f"{run_dir} is being trained by process {pid}; wait for it to finish or stop it "
                        "(Ctrl-C), then resume")


def _alive(pid: int, started: float | None) -> bool:
    """Whether process `pid` runs and is the one that wrote the lock (not a later process given the same pid)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(process.create_time() - started) < 1.0
    except psutil.Error:
        return False


def _process_started(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None
