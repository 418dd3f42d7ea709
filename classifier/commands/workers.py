"""Several workers on one machine, for a class demo: `invoke train --workers 2`.

    invoke train --dataset fashion_mnist --workers 2 --limit 6000 --epochs 2

starts two training processes on 127.0.0.1, each with its own free port and
TF_CONFIG, running `--strategy multiworker` (classifier/machinery/distribute.py) as
separate machines would. Worker 0, the chief, writes the run folder; its
output is shown as is, the other workers' lines start with "[worker N]".
With `--trainer torch` the same processes join a torch.distributed group at
worker 0's address instead (classifier/machinery/torch_distribute.py):

    invoke train --trainer torch --dataset fashion_mnist --workers 2 --limit 6000 --epochs 2

A watchdog stops the demo when a worker dies: the others fail on their own
within distribute.COLLECTIVE_TIMEOUT_SECONDS, and whatever is still running
after that and a grace period is killed, so nothing waits for ever. Each
worker's standard input is a pipe the launcher holds: when the launcher dies
(even by SIGKILL) the workers stop within seconds as Ctrl-C stops them, the
chief marking the run interrupted (lifecycle.stop_when_parent_exits).
`--resume RUN --workers 2` continues a stopped run from its last checkpoint.
This module imports neither TensorFlow nor torch; the workers do.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from classifier.config import PROJECT_ROOT, Config, Interrupted, UserError, make_config, to_dict
from classifier.machinery.cluster import check_batch_split, free_ports, tf_config
from classifier.machinery.files import read_json, write_json
from classifier.machinery.lifecycle import epochs_saved, stop_when_parent_exits
from classifier.machinery.runs import LOCK_FILE, resume_command, resume_target

# After one worker has failed, how long the others get to stop by themselves
# (their collective ops time out after distribute.COLLECTIVE_TIMEOUT_SECONDS)
# before the watchdog kills them.
GRACE_SECONDS = 150
MAX_LOCAL_WORKERS = 8


def start_local_workers(config: Config, workers: int, resume: str = "", given: frozenset[str] | None = None,
                        grace_seconds: float = GRACE_SECONDS) -> Path:
    """Train with `workers` processes on this machine and wait for them; returns the chief's run folder.

    Args:
        config: the run's settings (its strategy becomes "multiworker").
        workers: how many worker processes, 2 to MAX_LOCAL_WORKERS.
        resume: a stopped multi-worker run folder to continue.
        given: the config keys the person set (as for train_command).
        grace_seconds: how long the other workers get to stop after one fails.

    Raises:
        UserError: a bad worker count, or a worker failed (one line saying which and how to resume).
    """
    if not 2 <= workers <= MAX_LOCAL_WORKERS:
        raise UserError(f"--workers must be between 2 and {MAX_LOCAL_WORKERS}, got {workers}")
    if resume:
        _, saved = resume_target(Path(resume))
        if saved.strategy != "multiworker":
            raise UserError(f"--resume {resume} was trained with --strategy {saved.strategy}; "
                            "continue it without --workers")
    # Checked here, once, rather than by every worker: e.g. a bad --model, or a torch batch the workers cannot share.
    settings = make_config(config, strategy="multiworker")
    if settings.trainer == "torch":
        check_batch_split(settings.batch_size, workers)  # each torch worker takes an equal share of every batch
    processes = _start(json.dumps(to_dict(settings)), workers, resume, ",".join(sorted((given or frozenset()) | {"strategy"})))
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
        command = [sys.executable, "-m", "classifier.commands.workers", "--config", settings, "--given", keys,
                   "--resume", resume]
        environment = {**os.environ, "TF_CONFIG": tf_config(ports, index), "PYTHONUNBUFFERED": "1"}
        # stdin: a pipe never written to, whose end tells the worker that the launcher is gone (main, below).
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=environment, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
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
    """Kill whatever is still running (each worker leads its own process group)."""
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    for process in processes:
        process.wait()


def main(argv: list[str] | None = None) -> None:
    """One worker of `start_local_workers` (TF_CONFIG in its environment): train_command, errors as one line.

    Its standard input is the launcher's pipe: its end (the launcher died) stops the worker as Ctrl-C would.
    """
    import argparse

    from classifier.commands.train import train_command

    parser = argparse.ArgumentParser(description="One worker of a local multi-worker run.")
    parser.add_argument("--config", required=True, help="the run's config as JSON")
    parser.add_argument("--given", default="", help="comma-separated config keys the person set")
    parser.add_argument("--resume", default="", help="run folder to continue")
    args = parser.parse_args(argv)
    stop_when_parent_exits(sys.stdin.fileno())
    try:
        config = make_config(**json.loads(args.config))
        given = frozenset(key for key in args.given.split(",") if key)
        train_command(config, resume=args.resume, given=given, verbose=2)
    except UserError as error:
        print(f"error: {error}", flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
