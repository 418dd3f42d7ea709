"""Starting N local worker processes and watching them: the machinery of `invoke train --workers N`.

    invoke train --dataset fashion_mnist --workers 2 --limit 6000 --epochs 2

Each worker is `python -m classifier.commands.workers` on 127.0.0.1 with its own
port and TF_CONFIG, in its own session, its standard input a pipe this launcher
holds (its end stops the worker, lifecycle.stop_when_parent_exits). The chief's
output is shown as is, the others' after "[worker N] "; a watchdog kills what
is still running `grace_seconds` after the first failure; Ctrl-C kills the
workers and marks the chief's run folder interrupted. Imports neither
TensorFlow nor torch; the workers do.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from classifier.config import PROJECT_ROOT, Interrupted, UserError
from classifier.machinery.cluster import free_ports, tf_config
from classifier.machinery.files import read_json, write_json
from classifier.machinery.lifecycle import epochs_saved
from classifier.machinery.runs import LOCK_FILE, resume_command

# Each worker leads a process group of its own (on Windows a console group), so that the terminal's Ctrl-C
# reaches the launcher alone, which then stops the workers in order (_watch).
_OWN_GROUP = ({"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if sys.platform == "win32"
              else {"start_new_session": True})

# After one worker has failed, how long the others get to stop by themselves
# (their collective ops time out after distribute.COLLECTIVE_TIMEOUT_SECONDS)
# before the watchdog kills them.
GRACE_SECONDS = 150
# The module each worker runs (a name, not an import: machinery does not import commands).
WORKER_MODULE = "classifier.commands.workers"


def run_local_workers(settings: str, workers: int, resume: str, keys: str,
                      grace_seconds: float = GRACE_SECONDS) -> Path:
    """Start `workers` worker processes, relay their output and wait for them; returns the chief's run folder.

    Args:
        settings: the run's config as JSON (strategy "multiworker").
        workers: how many worker processes.
        resume: a stopped multi-worker run folder to continue ("" for a new run).
        keys: comma-separated config keys the person set.
        grace_seconds: how long the other workers get to stop after one fails.

    Raises:
        UserError: a worker failed (one line saying which and how to resume).
        Interrupted: Ctrl-C; the workers were killed and the chief's run marked interrupted.
    """
    processes = _start(settings, workers, resume, keys)
    lines: list[str] = []
    readers = [threading.Thread(target=_relay, args=(process, index, lines), daemon=True)
               for index, process in enumerate(processes)]
    for reader in readers:
        reader.start()
    try:
        failed = _watch(processes, grace_seconds)
    except KeyboardInterrupt:
        _stop(processes)
        _finish_reading(readers, lines)
        _interrupted(resume or _run_folder(lines), workers)
    _finish_reading(readers, lines)
    run_dir = _run_folder(lines)
    if failed is not None:
        index, code = failed
        reason = "was killed" if code < 0 else f"exited with code {code}"
        errors = [line[len("error: "):] for line in lines if line.startswith("error: ")]
        # A worker's own error (bad data, a full disk) says more than its exit code.
        detail = f": {errors[0]}" if errors and index == 0 else ""
        target = resume or run_dir
        hint = f"; continue with: {resume_command(target, workers)}" if target else ""
        raise UserError(f"worker {index} {reason}{detail}; the other workers were stopped{hint}")
    return Path(run_dir)



def _start(settings: str, workers: int, resume: str, keys: str) -> list[subprocess.Popen]:
    """Start the worker processes on 127.0.0.1, each in its own session, told its place by TF_CONFIG."""
    ports = free_ports(workers)
    processes = []
    for index in range(workers):
        command = [sys.executable, "-m", WORKER_MODULE, "--config", settings, "--given", keys,
                   "--resume", resume]
        environment = {**os.environ, "TF_CONFIG": tf_config(ports, index), "PYTHONUNBUFFERED": "1"}
        # stdin: a pipe never written to, whose end tells the worker that the launcher is gone (main, below).
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=environment, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8",
                                   errors="replace", **_OWN_GROUP)
        print(f"[workers] worker {index}: pid {process.pid}, 127.0.0.1:{ports[index]}", flush=True)
        processes.append(process)
    return processes


def _finish_reading(readers: list[threading.Thread], lines: list[str]) -> None:
    """Wait for the workers' last lines, then delete their scratch folders (named in those lines)."""
    for reader in readers:
        reader.join(timeout=5)
    _remove_scratch_folders(lines)


def _run_folder(lines: list[str]) -> str:
    """The run folder the chief printed ("Run folder: PATH"), or "" before it made one."""
    return next((line.split(": ", 1)[1] for line in reversed(lines) if line.startswith("Run folder: ")), "")


def _interrupted(run_dir: str, workers: int) -> None:
    """After Ctrl-C and the workers stopped: mark the chief's run folder as train_command would, and say how to go on.

    The workers are killed rather than asked to stop (they lead their own
    process groups, out of the terminal's reach), so the launcher writes the
    chief's manifest: its checkpoint holds the last epoch every worker finished.
    """
    if not run_dir:
        raise Interrupted("stopped before the chief made its run folder; nothing to continue")
    run = Path(run_dir)
    manifest_path = run / "manifest.json"
    try:
        manifest = read_json(manifest_path)
    except (OSError, ValueError):
        manifest = None
    if isinstance(manifest, dict) and manifest.get("status") == "running":
        write_json(manifest_path, {**manifest, "status": "interrupted"})
    (run / LOCK_FILE).unlink(missing_ok=True)  # the chief's, which was killed before it could give it back
    epochs = manifest.get("config", {}).get("epochs", "?") if isinstance(manifest, dict) else "?"
    raise Interrupted(f"stopped after {epochs_saved(run / 'checkpoint')}/{epochs} epoch(s); "
                      f"continue with: {resume_command(run, workers)}")


def _remove_scratch_folders(lines: list[str]) -> None:
    """Delete the other workers' scratch folders; one that finished deleted its own, a killed one could not."""
    marker = "Scratch folder of this worker: "
    for line in lines:
        if line.startswith("[worker ") and marker in line:
            shutil.rmtree(line.split(marker, 1)[1], ignore_errors=True)


def _relay(process: subprocess.Popen, index: int, lines: list[str]) -> None:
    """Print a worker's output as it comes: the chief's as is, the others' after "[worker N] "."""
    for line in process.stdout:
        line = line.rstrip("\n")
        if index == 0:
            lines.append(line)
            # The chief's own error line is folded into the launcher's one line.
            if not line.startswith("error: "):
                print(line, flush=True)
        else:
            lines.append(f"[worker {index}] {line}")
            print(f"[worker {index}] {line}", flush=True)


def _watch(processes: list[subprocess.Popen], grace_seconds: float) -> tuple[int, int] | None:
    """Wait for every worker; after the first failure give the others `grace_seconds`, then kill them.

    Returns:
        None when every worker finished with exit code 0, else (index, exit code) of the first that failed.
    """
    failed = None
    deadline = None
    while any(process.poll() is None for process in processes):
        if failed is None and (failed := _first_failure(processes)) is not None:
            deadline = time.monotonic() + grace_seconds
        if deadline is not None and time.monotonic() > deadline:
            _stop(processes)
            break
        time.sleep(0.2)
    return failed or _first_failure(processes)


def _first_failure(processes: list[subprocess.Popen]) -> tuple[int, int] | None:
    """(index, exit code) of the worker that failed first as far as can be told: one killed by a signal
    (the others then fail because it is gone), else the lowest index that exited with an error."""
    codes = [(index, process.returncode) for index, process in enumerate(processes)
             if process.returncode not in (None, 0)]
    return min(codes, key=lambda item: (item[1] >= 0, item[0]), default=None)


def _stop(processes: list[subprocess.Popen]) -> None:
    """Kill whatever is still running, each worker with the processes it started."""
    for process in processes:
        if process.poll() is None:
            _kill_tree(process.pid)
    for process in processes:
        process.wait()


def _kill_tree(pid: int) -> None:
    """Kill a process and its children: psutil does it the same way on Windows, which has no process groups."""
    try:
        parent = psutil.Process(pid)
        family = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        return
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
