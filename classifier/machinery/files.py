"""Writing files so that a reader never sees half of one: the lab's one atomic-write helper.

    with atomic_write(run_dir / "model.keras") as temporary:
        model.save(temporary)          # anything that writes to a path
    write_json(run_dir / "metrics.json", metrics)

The content goes to a temporary name in the same folder, is flushed to disk,
and only then renamed over the final name, so a kill, a full disk or an
exception leaves the old file (or no file) under the final name, never a
broken one; the temporary file is removed on failure.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path

from classifier.config import UserError

try:
    import fcntl  # Unix
except ImportError:  # Windows: its C runtime's byte-range locks instead (exclusive_lock)
    fcntl = None
    import msvcrt

# The errors a write gets when the disk (or the user's quota) is full.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(UserError):
    """A file could not be written for want of space; `path` names it."""

    def __init__(self, path, advice: str = ""):
        self.path = Path(path)
        super().__init__(f"cannot write {self.path}: no space left on device" + (f"; {advice}" if advice else ""))


def disk_full(error: BaseException) -> DiskFull | None:
    """`error` as a DiskFull when it means the disk is full (a DiskFull, or an OSError ENOSPC/EDQUOT), else None."""
    if isinstance(error, DiskFull):
        return error
    if isinstance(error, OSError) and error.errno in _NO_SPACE:
        return DiskFull(error.filename or "a file")
    return None


@contextlib.contextmanager
def atomic_write(path: Path, mode: int | None = None):
    """Yield a temporary path beside `path`; on success fsync it and rename it to `path`.

    Args:
        path: the final file name.
        mode: permission bits for the file (e.g. 0o600), set before it gets its
            final name; None gives the usual ones (0666 less the umask).

    Yields:
        The temporary path to write to. Its suffix is the final one, so that
        writers which choose a format by suffix (Keras, matplotlib) still do.
    """
    path = Path(path)
    try:
        handle, name = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=path.suffix, dir=path.parent)
    except OSError as error:
        if error.errno in _NO_SPACE:
            raise DiskFull(path) from None
        raise UserError(f"cannot write {path}: {error.strerror}") from None
    os.close(handle)
    temporary = Path(name)
    try:
        os.chmod(temporary, mode if mode is not None else 0o666 & ~_umask())
        yield temporary
        _fsync(temporary)
        os.replace(temporary, path)
    except OSError as error:
        if error.errno in _NO_SPACE:
            raise DiskFull(path) from None
        raise UserError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        temporary.unlink(missing_ok=True)


def write_text(path: Path, text: str, mode: int | None = None) -> Path:
    """Write `text` to `path` atomically."""
    with atomic_write(path, mode) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: Path, data) -> Path:
    """Write `data` as indented JSON to `path` atomically."""
    return write_text(path, json.dumps(data, indent=2) + "\n")


def sha256_of(path: Path, opener=open) -> str:
    """The SHA-256 hex digest of a file, read in chunks by `hashlib.file_digest`.

    Args:
        path: the file.
        opener: how to open it for reading bytes; `gzip.open` hashes a gzip file's decompressed bytes.
    """
    with opener(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


@contextlib.contextmanager
def exclusive_lock(path: Path):
    """Hold an exclusive lock on the file `path` (created if missing) for the block; wait while another holds it.

    The lab's one choice between the systems' locks: fcntl.flock on Unix,
    msvcrt.locking on Windows. Either is released by the operating system
    when its holder exits, even killed, so no lock is ever left behind; the
    empty file stays.

    Args:
        path: the lock file, e.g. a dataset folder's .lock.
    """
    with open(path, "wb") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
            return
        _windows_lock(handle, msvcrt.LK_LOCK)
        try:
            yield
        finally:
            _windows_lock(handle, msvcrt.LK_UNLCK)  # Microsoft's advice: unlock before closing


def _windows_lock(handle, mode: int) -> None:
    """msvcrt.locking on the file's first byte; LK_LOCK gives up after 10 tries a second apart: wait on, as flock does."""
    while True:
        handle.seek(0)  # msvcrt locks from the current position
        try:
            msvcrt.locking(handle.fileno(), mode, 1)
            return
        except OSError as error:
            if mode != msvcrt.LK_LOCK or error.errno not in (errno.EDEADLOCK, errno.EACCES):
                raise


def read_json(path: Path):
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def _fsync(path: Path) -> None:
    # A folder written by a tool (a SavedModel) is renamed as it is; files are flushed first.
    if path.is_file():
        with open(path, "rb+") as stream:
            os.fsync(stream.fileno())


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
