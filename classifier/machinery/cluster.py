"""The cluster a multi-worker run belongs to, read and written without TensorFlow.

    TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
    workers, index = worker_role()          # (2, 0); a missing or bad TF_CONFIG is one line

`invoke train --workers N` (classifier/commands/workers.py) writes one
TF_CONFIG per local worker with `tf_config` on ports from `free_ports`;
`--strategy multiworker` (classifier/machinery/distribute.py) checks it with
`worker_role` before TensorFlow loads.
"""

from __future__ import annotations

import json
import os
import socket

from classifier.config import UserError


def free_ports(count: int) -> list[int]:
    """`count` TCP ports on 127.0.0.1 that nothing listens on now (the OS picks them)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tf_config(ports: list[int], index: int) -> str:
    """TF_CONFIG for worker `index` of a cluster on 127.0.0.1 at `ports`."""
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                       "task": {"type": "worker", "index": index}})


def worker_role() -> tuple[int, int]:
    """(number of workers, this worker's index) from TF_CONFIG, without TensorFlow.

    Raises:
        UserError: TF_CONFIG is missing, not JSON, or lacks the cluster's worker list or this task.
    """
    text = os.environ.get("TF_CONFIG", "")
    example = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}')
    if not text:
        raise UserError(f"--strategy multiworker needs TF_CONFIG, e.g. TF_CONFIG='{example}' "
                        "(or start local workers with: invoke train --workers 2)")
    try:
        tf_config = json.loads(text)
        workers = tf_config["cluster"]["worker"]
        task = tf_config["task"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"TF_CONFIG {text!r} is not of the form {example}") from None
    # Valid JSON of the wrong shape would reach TensorFlow, which fails with a traceback: name the bad part here.
    if not isinstance(workers, list) or not workers:
        raise UserError(f"TF_CONFIG's cluster.worker must be a list of \"host:port\" strings, got {workers!r}")
    for address in workers:
        _check_address(address)
    index = task.get("index") if isinstance(task, dict) else None
    if not isinstance(task, dict) or task.get("type") != "worker" or isinstance(index, bool) \
            or not isinstance(index, int) or not 0 <= index < len(workers):
        raise UserError(f"TF_CONFIG's task {task!r} must be a worker with an index below {len(workers)}, "
                        'e.g. {"type": "worker", "index": 0}')
    return len(workers), index


def _check_address(address) -> None:
    """One worker address of TF_CONFIG: "host:port", the port a number from 1 to 65535."""
    host, _, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UserError(f"TF_CONFIG's worker address {address!r} must be \"host:port\" with a port number "
                        "from 1 to 65535, e.g. \"host1:12345\"")


def chief_address() -> str:
    """host:port of worker 0 in TF_CONFIG, where a torch.distributed process group meets (check `worker_role` first)."""
    return json.loads(os.environ["TF_CONFIG"])["cluster"]["worker"][0]


def check_batch_split(batch_size: int, workers: int) -> None:
    """A global batch that the workers cannot share evenly is a UserError (torch's workers take batch_size / workers each)."""
    if batch_size % workers:
        raise UserError(f"--batch-size {batch_size} does not split evenly between {workers} workers; "
                        f"pick a multiple of {workers}")
