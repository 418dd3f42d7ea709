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
This module checks the settings and is each worker's entry point (main); starting
and watching the workers is classifier/machinery/local_workers.py. It imports
neither TensorFlow nor torch; the workers do.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from classifier.config import Config, UserError, make_config, to_dict
from classifier.machinery.cluster import check_batch_split
from classifier.machinery.lifecycle import stop_when_parent_exits
from classifier.machinery.local_workers import GRACE_SECONDS, run_local_workers
from classifier.machinery.runs import resume_target

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
    keys = ",".join(sorted((given or frozenset()) | {"strategy"}))
    return run_local_workers(json.dumps(to_dict(settings)), workers, resume, keys, grace_seconds)


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
