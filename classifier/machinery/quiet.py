"""Keep TensorFlow's C++ start-up notices out of a notebook's cells and off the command line.

    from classifier.machinery import quiet
    quiet.drop_native_notices()   # before `import tensorflow`

    CLASSIFIER_VERBOSE=1 invoke train ...   # shows them again (no filter)

On import, TensorFlow 2.21's two libraries each write absl INFO lines straight
to the process's stderr (file descriptor 2), before TF_CPP_MIN_LOG_LEVEL
(which classifier/__init__.py sets) can hold them back:

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:1796415520.553973   20205 port.cc:153] oneDNN custom operations are on. ...

A Jupyter kernel shows each as a red stderr box, twice, though nothing is
wrong; on the command line they come before a task's one-line error or its
first line of output. `drop_native_notices()` puts a filter on file
descriptor 2 that drops exactly those lines (absl's INFO lines and its
preamble) and passes everything else on at once: warnings, errors and
Python's own stderr are untouched. The notebooks call it (classifier/lab.py),
and so do the invoke tasks that import TensorFlow (tasks.py). With
CLASSIFIER_VERBOSE=1 it does nothing, for whoever needs to see the notices.
TensorFlow-free.
"""

from __future__ import annotations

import atexit
import os
import re
import threading

# An absl INFO line ("I" + MMDD, time, thread id, file:line]) or absl's preamble before it.
_DROPPED = re.compile(rb"I\d{4} \S+ +\d+ [\w.-]+:\d+\] .*"
                      rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR")
_PREAMBLE = b"WARNING: All log messages before absl::InitializeLog()"
_installed = False
# Set to 1 (or any non-empty value but 0) to keep the notices.
VERBOSE_VARIABLE = "CLASSIFIER_VERBOSE"


def drop_native_notices() -> None:
    """Filter absl INFO lines out of this process's stderr from now on (once per process; returns nothing)."""
    global _installed
    if _installed or os.environ.get(VERBOSE_VARIABLE, "") not in ("", "0"):
        return
    try:
        target = os.dup(2)  # where stderr went so far: the terminal, or the Jupyter kernel's capture
    except OSError:
        return  # no stderr to filter
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    forwarder = threading.Thread(target=_forward, args=(read_end, target), name="drop-native-notices", daemon=True)
    forwarder.start()
    atexit.register(_restore, target, forwarder)
    _installed = True


def _restore(target: int, forwarder: threading.Thread) -> None:
    """At exit: give stderr back and let the filter pass on what it still holds."""
    os.dup2(target, 2)  # closes the pipe's last writer, so the filter reads to its end
    forwarder.join(timeout=5)


def _forward(read_end: int, target: int) -> None:
    """Copy whole lines from `read_end` to `target`, less the dropped ones; text without a newline goes on at once."""
    pending = b""
    while chunk := os.read(read_end, 65536):
        *lines, pending = (pending + chunk).split(b"\n")
        kept = b"".join(line + b"\n" for line in lines if not _DROPPED.fullmatch(line.rstrip(b"\r")))
        if pending and not _may_become_dropped(pending):
            kept, pending = kept + pending, b""
        _write_all(target, kept)
    _write_all(target, pending)


def _may_become_dropped(partial: bytes) -> bool:
    """Whether an unfinished line could still turn out to be one that is dropped."""
    return bool(re.fullmatch(rb"I\d{0,4}( .*)?", partial, re.DOTALL)) or _PREAMBLE.startswith(partial[:len(_PREAMBLE)])


def _write_all(target: int, data: bytes) -> None:
    while data:
        data = data[os.write(target, data):]
